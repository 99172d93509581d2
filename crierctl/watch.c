/* watch.c - crierctl watch CAMPAIGN: follows a campaign's live progress
 * through the API's event stream (GET /v1/campaigns/{id}/events, with
 * CRIER_API_URL and CRIER_API_KEY as crierctl import uses them).
 *
 * On a terminal it draws two lines in place: a progress bar (terminal
 * deliveries over targeted) and the figures (targeted, contacted,
 * delivered, responded, opted out, failed, unknown, with their rates).
 * Otherwise, or with --plain, it prints one line of key=value pairs per
 * update, and "done status=<status>" at the end.
 *
 * A stream that ends before the campaign does (the API restarting, a
 * connection lost) is opened again, for as long as the failures last less
 * than WATCH_RETRY_S seconds. A stream silent for WATCH_SILENCE_S seconds
 * (the API sends a comment every 15 s) counts as lost.
 *
 * Exit status: 0 the campaign is completed or cancelled; 1 an error (the
 * key refused, no such campaign, the API unreachable or answering
 * otherwise), with a message on stderr; 2 usage. */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "ctl.h"
#include "xalloc.h"

#define WATCH_RETRY_S 30
#define WATCH_SILENCE_S 60
#define WATCH_MAX_LINE (4L << 20)   /* one SSE line (a stats JSON is a few KB) */
#define WATCH_MAX_ERROR (64L << 10) /* an error reply's body kept for its message */

enum watch_end {
    WATCH_RUNNING = 0,
    WATCH_DONE,    /* event: done */
    WATCH_REFUSED, /* a non-200 answer, or event: error */
    WATCH_BROKEN,  /* the stream could not be read (too long a line) */
};

struct watch {
    long long campaign;
    bool tty;
    bool drawn; /* the two live lines are on the screen */
    long http_status;
    CURL *h;
    struct buf line;  /* the SSE line being received */
    struct buf data;  /* the data lines of the event being received */
    struct buf error; /* the body of a non-200 answer */
    char event[32];
    char final_status[32];
    char error_msg[1600];
    long stats_seen; /* stats events of the current stream */
    enum watch_end end;
};

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* A rate as a percentage ("96.1 %"), "-" when null. */
static void pct(char *out, size_t n, const cJSON *rates, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rates, key);
    if (cJSON_IsNumber(v))
        snprintf(out, n, "%.1f %%", v->valuedouble * 100.0);
    else
        snprintf(out, n, "-");
}

/* A rate as a number with 4 decimals, "-" when null. */
static void ratio(char *out, size_t n, const cJSON *rates, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rates, key);
    if (cJSON_IsNumber(v))
        snprintf(out, n, "%.4f", v->valuedouble);
    else
        snprintf(out, n, "-");
}

static void draw(struct watch *w, const cJSON *st)
{
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(st, "status");
    const char *s = cJSON_IsString(status) ? status->valuestring : "?";
    const cJSON *rates = cJSON_GetObjectItemCaseSensitive(st, "rates");
    double targeted = num(st, "targeted"), terminal = num(st, "terminal");
    if (!w->tty) {
        char rd[16], rr[16], ro[16], rf[16];
        ratio(rd, sizeof(rd), rates, "delivered");
        ratio(rr, sizeof(rr), rates, "responded");
        ratio(ro, sizeof(ro), rates, "opted_out");
        ratio(rf, sizeof(rf), rates, "failed");
        printf("campaign=%lld status=%s targeted=%.0f terminal=%.0f contacted=%.0f "
               "delivered=%.0f responded=%.0f opted_out=%.0f failed=%.0f unknown=%.0f "
               "skipped=%.0f delivered_rate=%s responded_rate=%s opted_out_rate=%s "
               "failed_rate=%s\n",
               w->campaign, s, targeted, terminal, num(st, "contacted"), num(st, "delivered"),
               num(st, "responded"), num(st, "opted_out"), num(st, "failed"), num(st, "unknown"),
               num(st, "skipped"), rd, rr, ro, rf);
        fflush(stdout);
        return;
    }
    double frac = targeted > 0 ? terminal / targeted : 0;
    char bar[41];
    int fill = (int)(frac * 40);
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[40] = '\0';
    char rd[16], rr[16], ro[16], rf[16];
    pct(rd, sizeof(rd), rates, "delivered");
    pct(rr, sizeof(rr), rates, "responded");
    pct(ro, sizeof(ro), rates, "opted_out");
    pct(rf, sizeof(rf), rates, "failed");
    char l1[256], l2[512];
    snprintf(l1, sizeof(l1), "campaign %lld %-9s [%s] %5.1f %%  %.0f/%.0f done", w->campaign, s,
             bar, frac * 100.0, terminal, targeted);
    snprintf(l2, sizeof(l2),
             "targeted %.0f  contacted %.0f  delivered %.0f (%s)  responded %.0f (%s)  "
             "opted out %.0f (%s)  failed %.0f (%s)  unknown %.0f",
             targeted, num(st, "contacted"), num(st, "delivered"), rd, num(st, "responded"), rr,
             num(st, "opted_out"), ro, num(st, "failed"), rf, num(st, "unknown"));
    /* Cut to the terminal's width: a wrapped line would break the redraw. */
    struct winsize ws;
    int cols = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 ? ws.ws_col - 1 : 79;
    if (w->drawn)
        fputs("\r\033[1A", stdout);
    printf("\r\033[K%.*s\n\033[K%.*s", cols, l1, cols, l2);
    fflush(stdout);
    w->drawn = true;
}

/* One complete event (name in w->event, data in w->data). */
static void on_event(struct watch *w)
{
    const char *data = buf_str(&w->data);
    if (!strcmp(w->event, "stats")) {
        cJSON *st = cJSON_Parse(data);
        if (st) {
            w->stats_seen++;
            draw(w, st);
        }
        cJSON_Delete(st);
    } else if (!strcmp(w->event, "done")) {
        cJSON *d = cJSON_Parse(data);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(d, "status");
        snprintf(w->final_status, sizeof(w->final_status), "%s",
                 cJSON_IsString(s) ? s->valuestring : "finished");
        cJSON_Delete(d);
        w->end = WATCH_DONE;
    } else if (!strcmp(w->event, "error")) {
        cJSON *d = cJSON_Parse(data);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(d, "error"), "message");
        snprintf(w->error_msg, sizeof(w->error_msg), "the API ended the stream: %s",
                 cJSON_IsString(m) ? m->valuestring : data);
        cJSON_Delete(d);
        w->end = WATCH_REFUSED;
    }
}

/* One SSE line (without its end of line). */
static void on_line(struct watch *w, const char *l, size_t n)
{
    if (n == 0) {
        if (w->data.len > 0 || w->event[0])
            on_event(w);
        w->event[0] = '\0';
        buf_reset(&w->data);
        return;
    }
    if (l[0] == ':')
        return; /* a comment: the keep-alive */
    const char *colon = memchr(l, ':', n);
    size_t fl = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ')
        v++;
    size_t vl = (size_t)(l + n - v);
    if (fl == 5 && !strncmp(l, "event", 5)) {
        snprintf(w->event, sizeof(w->event), "%.*s", (int)vl, v);
    } else if (fl == 4 && !strncmp(l, "data", 4)) {
        if ((w->data.len > 0 && buf_putc(&w->data, '\n') != CR_OK) ||
            buf_append(&w->data, v, vl) != CR_OK)
            w->end = WATCH_BROKEN;
    }
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    struct watch *w = arg;
    size_t n = size * nmemb;
    if (w->http_status == 0)
        curl_easy_getinfo(w->h, CURLINFO_RESPONSE_CODE, &w->http_status);
    if (w->http_status != 200) {
        if (buf_append(&w->error, p, n) != CR_OK)
            return 0;
        return n;
    }
    for (size_t i = 0; i < n && w->end == WATCH_RUNNING; i++) {
        if (p[i] == '\n') {
            size_t len = w->line.len;
            if (len && w->line.data[len - 1] == '\r')
                len--;
            on_line(w, w->line.data ? w->line.data : "", len);
            buf_reset(&w->line);
        } else if (buf_putc(&w->line, p[i]) != CR_OK) {
            w->end = WATCH_BROKEN;
        }
    }
    /* Stop reading once the stream said what it had to. */
    return w->end == WATCH_RUNNING ? n : 0;
}

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* The message of a non-200 answer: the API's error message, else its body. */
static void refused_message(struct watch *w, const char *url)
{
    cJSON *j = cJSON_Parse(buf_str(&w->error));
    const cJSON *m =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
    const char *msg = cJSON_IsString(m) ? m->valuestring : buf_str(&w->error);
    if (w->http_status == 401)
        snprintf(w->error_msg, sizeof(w->error_msg),
                 "the API refused the key (401: %s); check CRIER_API_KEY", msg);
    else if (w->http_status == 404)
        snprintf(w->error_msg, sizeof(w->error_msg), "no such campaign %lld (404: %s)", w->campaign,
                 msg);
    else
        snprintf(w->error_msg, sizeof(w->error_msg), "%s answered %ld: %.300s", url, w->http_status,
                 msg);
    cJSON_Delete(j);
}

static int usage(void)
{
    fprintf(stderr, "usage: crierctl watch [--plain] CAMPAIGN_ID\n");
    return 2;
}

int ctl_watch(const struct ctl_config *cfg, int argc, char **argv)
{
    struct watch w;
    memset(&w, 0, sizeof(w));
    bool plain = false;
    const char *id = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--plain"))
            plain = true;
        else if (argv[i][0] == '-' || id)
            return usage();
        else
            id = argv[i];
    }
    char *end = NULL;
    w.campaign = id ? strtoll(id, &end, 10) : 0;
    if (!id || !*id || *end || w.campaign <= 0)
        return usage();
    if (!cfg->api_key || !*cfg->api_key) {
        fprintf(stderr, "crierctl watch: set CRIER_API_KEY (an API key of the tenant)\n");
        return 2;
    }
    w.tty = !plain && isatty(STDOUT_FILENO);

    const char *base = cfg->api_url;
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    char url[1100];
    snprintf(url, sizeof(url), "%.*s/v1/campaigns/%lld/events", (int)bl, base, w.campaign);
    char *auth = xasprintf("Authorization: Bearer %s", cfg->api_key);
    struct curl_slist *headers = curl_slist_append(NULL, auth);
    free(auth);
    headers = curl_slist_append(headers, "Accept: text/event-stream");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    buf_init(&w.line, WATCH_MAX_LINE);
    buf_init(&w.data, WATCH_MAX_LINE);
    buf_init(&w.error, WATCH_MAX_ERROR);

    int rc = 1;
    bool streamed = false;    /* a stream has delivered stats once */
    double failing_since = 0; /* the first failure of the current run of them */
    for (;;) {
        char errbuf[CURL_ERROR_SIZE] = "";
        w.h = curl_easy_init();
        w.http_status = 0;
        w.stats_seen = 0;
        w.event[0] = '\0';
        buf_reset(&w.line);
        buf_reset(&w.data);
        buf_reset(&w.error);
        curl_easy_setopt(w.h, CURLOPT_URL, url);
        curl_easy_setopt(w.h, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(w.h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(w.h, CURLOPT_WRITEDATA, &w);
        curl_easy_setopt(w.h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(w.h, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(w.h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(w.h, CURLOPT_LOW_SPEED_TIME, (long)WATCH_SILENCE_S);
        curl_easy_setopt(w.h, CURLOPT_NOSIGNAL, 1L);
        CURLcode code = curl_easy_perform(w.h);
        if (w.http_status == 0)
            curl_easy_getinfo(w.h, CURLINFO_RESPONSE_CODE, &w.http_status);
        curl_easy_cleanup(w.h);
        w.h = NULL;
        streamed |= w.stats_seen > 0;

        if (w.end == WATCH_DONE) {
            if (w.tty && w.drawn)
                putchar('\n');
            printf("done status=%s\n", w.final_status);
            rc = 0;
            break;
        }
        if (w.end == WATCH_REFUSED || w.end == WATCH_BROKEN) {
            if (w.end == WATCH_BROKEN)
                snprintf(w.error_msg, sizeof(w.error_msg), "the event stream is malformed");
            break;
        }
        bool retry;
        if (w.http_status != 0 && w.http_status != 200) {
            /* 503: shutting down or too many streams; 502/504: a proxy. */
            retry = w.http_status == 502 || w.http_status == 503 || w.http_status == 504;
            refused_message(&w, url);
            if (!retry)
                break;
        } else if (code != CURLE_OK) {
            snprintf(w.error_msg, sizeof(w.error_msg), "cannot reach the API at %.*s: %s", (int)bl,
                     base, errbuf[0] ? errbuf : curl_easy_strerror(code));
            /* The very first connection failing is an answer: no retry. */
            retry = streamed;
            if (!retry)
                break;
        } else {
            snprintf(w.error_msg, sizeof(w.error_msg),
                     "the API ended the stream before the campaign finished");
            retry = true;
        }
        if (w.stats_seen > 0)
            failing_since = 0; /* the stream worked for a while: a new run */
        if (failing_since == 0)
            failing_since = now_s();
        if (now_s() - failing_since > WATCH_RETRY_S)
            break;
        if (!w.tty)
            fprintf(stderr, "crierctl watch: %s; retrying\n", w.error_msg);
        sleep(1);
    }
    if (rc != 0) {
        if (w.tty && w.drawn)
            putchar('\n');
        fflush(stdout);
        fprintf(stderr, "crierctl watch: %s\n", w.error_msg);
    }
    buf_cleanup(&w.line);
    buf_cleanup(&w.data);
    buf_cleanup(&w.error);
    curl_slist_free_all(headers);
    curl_global_cleanup();
    return rc;
}
