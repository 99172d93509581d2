# shellcheck shell=bash
# tests/stats_truth.sh - the ground truth of a campaign's statistics, for the tests and
# benchmarks that compare GET /v1/campaigns/{id}/stats with it (sourced after lib.sh).
#
#   t_stats_truth CAMPAIGN FILTER   the summary of the campaign's deliveries matching the
#                                   SQL predicate FILTER (TRUE, "channel = 'sms'",
#                                   "variant = 'A'"), in the API's shape (without the
#                                   campaign fields and the breakdowns), as sorted compact
#                                   JSON; computed from deliveries alone, by the
#                                   definitions in api/stats.c
t_stats_truth() {
  t_psql "
  WITH d AS (SELECT * FROM deliveries WHERE campaign_id = $1 AND ($2)),
  c AS (SELECT count(*) AS targeted,
          count(*) FILTER (WHERE status IN ('sent','delivered','responded','undelivered','unknown'))
            AS contacted,
          count(*) FILTER (WHERE status IN ('delivered','responded')) AS delivered,
          count(*) FILTER (WHERE status = 'responded') AS responded,
          count(*) FILTER (WHERE opted_out_at IS NOT NULL) AS opted_out,
          count(*) FILTER (WHERE status = 'failed') AS failed,
          count(*) FILTER (WHERE status = 'unknown') AS unknown,
          count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened,
          count(*) FILTER (WHERE clicked_at IS NOT NULL) AS clicked,
          count(*) FILTER (WHERE status = 'skipped') AS skipped,
          count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
          count(*) FILTER (WHERE status IN ('pending','queued','sending','retry')) AS in_progress,
          count(satisfaction) AS sat_n, avg(satisfaction) AS sat_avg
        FROM d)
  SELECT json_build_object(
    'targeted', targeted, 'contacted', contacted, 'delivered', delivered,
    'responded', responded, 'opted_out', opted_out, 'failed', failed, 'unknown', unknown,
    'opened', opened, 'clicked', clicked, 'skipped', skipped, 'cancelled', cancelled,
    'in_progress', in_progress, 'terminal', targeted - in_progress,
    'rates', json_build_object(
      'delivered', round(delivered::numeric / NULLIF(contacted, 0), 4)::float8,
      'responded', round(responded::numeric / NULLIF(contacted, 0), 4)::float8,
      'opted_out', round(opted_out::numeric / NULLIF(contacted, 0), 4)::float8,
      'opened', round(opened::numeric / NULLIF(contacted, 0), 4)::float8,
      'clicked', round(clicked::numeric / NULLIF(contacted, 0), 4)::float8,
      'failed', round(failed::numeric / NULLIF(contacted + failed, 0), 4)::float8),
    'satisfaction', json_build_object('count', sat_n, 'average', round(sat_avg, 4)::float8),
    'counts', (SELECT COALESCE(json_object_agg(status, n), '{}')
               FROM (SELECT status, count(*) AS n FROM d GROUP BY status) s),
    'skipped_reasons', (SELECT COALESCE(json_object_agg(skip_reason, n), '{}')
               FROM (SELECT skip_reason, count(*) AS n FROM d WHERE status = 'skipped'
                     GROUP BY skip_reason) s),
    'outcomes', (SELECT COALESCE(json_object_agg(outcome, n), '{}')
               FROM (SELECT outcome, count(*) AS n FROM d WHERE outcome IS NOT NULL
                     GROUP BY outcome) s),
    'sentiments', (SELECT COALESCE(json_object_agg(sentiment, n), '{}')
               FROM (SELECT sentiment, count(*) AS n FROM d WHERE sentiment IS NOT NULL
                     GROUP BY sentiment) s))
  FROM c" | jq -S -c .
}
