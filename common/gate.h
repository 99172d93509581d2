/* gate.h - the reasons a customer must not be contacted, as SQL.
 *
 * The dispatcher applies them when it creates a campaign's deliveries (so
 * the stats show them at once) and the worker again when it claims a job
 * (an opt-out, suppression or contact may have happened since). Both build
 * the same expression from these macros over a customers row aliased c
 * (NULL when the customer was deleted):
 *   ch        SQL text of the channel ('sms' | 'email' | 'voice')
 *   has_supp  boolean SQL: whether to look at the tenant's suppressions
 *   cap       integer SQL: the tenant's frequency cap (NULL: none)
 * It yields NULL (contact allowed) or the skip reason. */
#ifndef CRIER_GATE_H
#define CRIER_GATE_H

#define GATE_ADDRESS(ch) "CASE " ch " WHEN 'email' THEN lower(c.email) ELSE c.phone END"
#define GATE_OPTED_OUT(ch)                                                                         \
    "CASE " ch " WHEN 'sms' THEN c.sms_opt_out WHEN 'email' THEN c.email_opt_out"                  \
    " ELSE c.voice_opt_out END"

#define GATE_SKIP_SQL(ch, has_supp, cap)                                                           \
    "CASE WHEN c.id IS NULL THEN 'customer_deleted'"                                               \
    " WHEN (" GATE_ADDRESS(                                                                        \
        ch) ") IS NULL THEN 'no_address'"                                                          \
            " WHEN " GATE_OPTED_OUT(                                                               \
                ch) " THEN 'opted_out'"                                                            \
                    " WHEN " has_supp " AND EXISTS (SELECT 1 FROM suppressions s"                  \
                    "   WHERE s.tenant_id = c.tenant_id AND s.channel = " ch                       \
                    "     AND s.address = " GATE_ADDRESS(                                          \
                        ch) ") THEN 'suppressed'"                                                  \
                            " WHEN " cap                                                           \
                            " IS NOT NULL AND crier_contacts_7d(c.tenant_id, c.id) >= " cap        \
                            "   THEN 'frequency_cap' END"

/* A campaign's deadline (k: campaigns row): sends later than this are
 * skipped as 'expired' instead of firing late. NULL: no expiry. */
#define GATE_DEADLINE_SQL "(COALESCE(k.scheduled_at, k.launched_at) + k.expire_after)"

#endif
