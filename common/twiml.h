/* twiml.h - the TwiML documents of a voice call, built from its campaign's
 * agent config (schema in agent.h). Pure: no I/O, no clock.
 *
 * A scripted call (no "agent" in the config) is one document per step:
 *   answer:  <Say> greeting, then question 0
 *   next(q): after question q was answered, question q + 1; after the last
 *            one the closing <Say> (when the config has one) and <Hangup/>
 * where a question is
 *   <Gather input="speech dtmf" action="{gather_url}&q=N" method="POST"
 *           language=... speechTimeout="auto" actionOnEmptyResult="true"
 *           [numDigits="1" | hints="choice, ..."]><Say>text</Say></Gather>
 *   <Redirect method="POST">{gather_url}&q=N</Redirect>
 * (the Redirect moves on when no input came and Twilio skipped the action).
 * Questions are numbered from 0, as in the config's "questions" array.
 *
 * With "agent" the answer document bridges the call to the AI voice agent:
 *   <Connect action="{gather_url}"><ConversationRelay url="wss://..."
 *     welcomeGreeting="greeting" language=...> or <Stream url="wss://...">
 *     with <Parameter> tenant and delivery </Connect>
 * and the Connect action (the gather URL without q) ends the call.
 *
 * Every text and URL is XML-escaped (& < > " '); characters XML 1.0 cannot
 * carry (C0 controls other than tab and line breaks) become spaces. Texts
 * are rendered with the customer's {{variables}} (template.h) first. */
#ifndef CRIER_TWIML_H
#define CRIER_TWIML_H

#include <cjson/cJSON.h>

#include "buf.h"
#include "err.h"
#include "template.h"

/* What a document is built from; everything is borrowed. */
struct twiml_call {
    const cJSON *agent;     /* the campaign's agent config (validated) */
    const char *gather_url; /* the gather endpoint with "?delivery=D" */
    tpl_lookup_fn lookup;   /* the customer's variables (may be NULL) */
    void *lookup_ctx;
    long long tenant, delivery; /* <Parameter>s for the AI agent */
};

/* The number of questions of a scripted config (0 when none). */
int twiml_questions(const cJSON *agent);

/* Appends the document Twilio fetches when the call connects. CR_EINVAL
 * when the config lacks what the document needs (greeting, a question, the
 * agent's url) or a text does not render, CR_ETOOBIG past out's maximum. */
enum cr_err twiml_answer(const struct twiml_call *c, struct buf *out) CR_MUST_CHECK;

/* Appends the document after question `answered` (0-based) was answered:
 * the next question, or the closing and <Hangup/> after the last one (and
 * for an index out of range). answered < 0 means the call's conversation is
 * over (an AI agent's Connect action came back): <Hangup/> for an AI agent
 * (it said its own goodbye), the closing and <Hangup/> for a script. Errors
 * as for twiml_answer. */
enum cr_err twiml_next(const struct twiml_call *c, int answered, struct buf *out) CR_MUST_CHECK;

/* Appends <Say>text</Say><Hangup/> (voice and language may be NULL):
 * how a call we cannot serve ends politely. */
enum cr_err twiml_hangup(const char *text, const char *language, const char *voice,
                         struct buf *out) CR_MUST_CHECK;

/* Appends s XML-escaped (for element text and attribute values alike). */
enum cr_err twiml_escape(struct buf *out, const char *s) CR_MUST_CHECK;

#endif
