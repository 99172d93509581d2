/* agent.h - voice agent configs: the schema, its validator and the built-in
 * agent templates.
 *
 * A voice campaign carries one agent config, a JSON object. Without "agent"
 * the call is scripted: <Say> the greeting, one <Gather input="speech dtmf">
 * per question, <Say> the closing. With "agent" the call is bridged to an AI
 * voice agent (<Connect><ConversationRelay> or <Connect><Stream>) that gets
 * the same prompt, questions and outcomes. Schema (lengths count Unicode
 * characters, not bytes; [T] marks texts that may hold {{variables}}):
 *
 *   name                  string 1..200, required
 *   campaign_type         "research" | "outbound_sales", required
 *   system_prompt     [T] string 1..8000 (line breaks allowed), required:
 *                         the AI agent's instructions
 *   greeting          [T] string 1..1000, required: spoken first
 *   questions             array of 1..20 objects, required, asked in order:
 *     id                  slug (1..64 of a-z 0-9 _), required, unique
 *     text            [T] string 1..500, required
 *     type                "open" | "yes_no" | "scale" | "choice", required
 *     choices             array of 2..9 strings 1..100, unique ignoring case;
 *                         required when type is "choice", not allowed otherwise
 *     scale               object, required when type is "scale", not allowed
 *                         otherwise: min, max integers 0..10 (min < max),
 *                         required; min_label, max_label strings 1..100
 *   closing           [T] string 1..1000: spoken last
 *   expected_outcomes     array of 1..20 objects, required; a call ends with
 *                         exactly one of them:
 *     id                  slug, required, unique
 *     description         string 1..500, required
 *     success             true | false: the outcome counts toward the
 *                         campaign's goal (default false)
 *   voice                 object, required:
 *     language            BCP-47 tag such as "en-US", "es-419", required
 *     voice               string 1..64 of letters, digits, '.', '-', '_' such
 *                         as "Polly.Joanna-Neural" or "alice", required
 *     speaking_rate       number 0.5..2.0 (1.0 is normal speed)
 *   max_duration_seconds  integer 30..3600: the call is ended after this
 *   machine_detection     "none" | "enable" | "detect_message_end" (Twilio
 *                         MachineDetection; "detect_message_end" waits for
 *                         the beep so a message can be left)
 *   agent                 object: bridge the call to an AI voice agent
 *     mode                "conversation_relay" | "stream", required
 *     url                 wss:// URL up to 2048 characters, required: a
 *                         host name or IP literal, optional port, no
 *                         credentials, no #fragment, no raw spaces
 *
 * Any other key is an error. Keypad answers: yes_no 1 = yes, 2 = no; choice
 * N is key N (hence at most 9 choices); scale: the number, then #.
 *
 * Variables: first_name, last_name, email, phone, external_id and
 * attributes.<key>[.<key>...], in the syntax of template.h, e.g.
 * "{{first_name|there}}". Texts must be valid UTF-8 without control
 * characters (system_prompt, greeting, closing, question texts and outcome
 * descriptions may hold line breaks and tabs) and must not be blank.
 *
 * The built-in templates are starting points for appointment-based
 * businesses; the offer and referral reward wording in special_offer_outbound
 * and referral_request is an example to edit. Checking that a campaign's
 * type matches the config's campaign_type is the caller's job. */
#ifndef CRIER_AGENT_H
#define CRIER_AGENT_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "err.h"

/* agent_validate lists at most this many problems, then one more entry
 * (field "") saying the list was cut short. */
#define AGENT_MAX_ERRORS 100

struct agent_template {
    const char *id;            /* slug [a-z0-9_]+, e.g. "booking_abandonment_research" */
    const char *name;          /* equal to the config's "name" */
    const char *campaign_type; /* "research" or "outbound_sales" */
    const char *json;          /* the full agent config as a JSON object text */
};

/* Returns the built-in templates (static, in a fixed order) and their number
 * in *count (when count is not NULL). */
const struct agent_template *agent_templates(size_t *count);

/* Returns the template with this id, or NULL if unknown (or id is NULL). */
const struct agent_template *agent_template_find(const char *id);

/* Validates an agent config. Returns CR_OK with *errors = NULL, or CR_EINVAL
 * with *errors set to a new cJSON array (caller deletes) of
 * {"field": "questions[2].text", "message": "..."} listing every problem
 * found (not just the first), in document order: each object's members as
 * they appear, then its missing required members, then cross-field rules.
 * A problem with the config as a whole has field "". errors may be NULL
 * when only the verdict is wanted. CR_ENOMEM (with *errors = NULL) if cJSON
 * cannot allocate the list. */
enum cr_err agent_validate(const cJSON *config, cJSON **errors) CR_MUST_CHECK;

#endif
