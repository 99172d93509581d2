/* segment_templates.c - the segment templates crier ships (see
 * segment_templates.h). The criteria are written in the tree form with every
 * op spelled out, so each reads exactly as the criteria table at the top of
 * segment.c defines it. In an "all" list, a channel / direction /
 * metadata_key leaf scopes the other interaction criteria of the list: they
 * look at those interactions only. */
#include "segment_templates.h"

#include <string.h>

static const struct seg_template seg_template_table[] = {
    {
        "sms_booking_abandoners",
        "SMS booking abandoners",
        "Texted with us in the last 14 days, and the latest SMS conversation that recorded a "
        "booking intent showed one, but no appointment is scheduled from 14 days ago onwards "
        "(nothing booked since).",
        "sms",
        "{\"all\": ["
        "{\"field\": \"channel\", \"op\": \"eq\", \"value\": \"sms\"}, "
        "{\"field\": \"booking_intent\", \"op\": \"eq\", \"value\": true}, "
        "{\"field\": \"days_since_last_interaction\", \"op\": \"lte\", \"value\": 14}, "
        "{\"field\": \"days_since_last_appointment\", \"op\": \"gte\", \"value\": 14}]}",
    },
    {
        "booking_flow_abandoners",
        "Booking flow abandoners",
        "Reached the online booking page (an interaction whose metadata has the key "
        "visited_booking_page) 1 to 7 days ago, the latest such visit included, and have no "
        "appointment scheduled from 7 days ago onwards.",
        "email",
        "{\"all\": ["
        "{\"field\": \"metadata_key\", \"op\": \"eq\", \"value\": \"visited_booking_page\"}, "
        "{\"field\": \"days_since_visit\", \"op\": \"gte\", \"value\": 1}, "
        "{\"field\": \"days_since_visit\", \"op\": \"lte\", \"value\": 7}, "
        "{\"field\": \"days_since_last_appointment\", \"op\": \"gte\", \"value\": 7}]}",
    },
    {
        "high_satisfaction_no_repeat",
        "High satisfaction, no repeat visit",
        "Rated us 4 or 5 at their latest rating and came exactly once: one appointment, "
        "completed, at least 30 days ago, and nothing booked since.",
        "email",
        "{\"all\": ["
        "{\"field\": \"min_satisfaction\", \"op\": \"gte\", \"value\": 4}, "
        "{\"field\": \"appointment_count\", \"op\": \"eq\", \"value\": 1}, "
        "{\"field\": \"last_appointment_status\", \"op\": \"eq\", \"value\": \"completed\"}, "
        "{\"field\": \"days_since_last_appointment\", \"op\": \"gte\", \"value\": 30}]}",
    },
    {
        "recent_callers_without_booking",
        "Recent callers without a booking",
        "Called us (an inbound voice interaction) in the last 7 days, and have no appointment "
        "scheduled from 7 days ago onwards.",
        "sms",
        "{\"all\": ["
        "{\"field\": \"channel\", \"op\": \"eq\", \"value\": \"voice\"}, "
        "{\"field\": \"direction\", \"op\": \"eq\", \"value\": \"inbound\"}, "
        "{\"field\": \"days_since_last_interaction\", \"op\": \"lte\", \"value\": 7}, "
        "{\"field\": \"days_since_last_appointment\", \"op\": \"gte\", \"value\": 7}]}",
    },
    {
        "inactive_90_days",
        "Inactive for 90+ days",
        "No contact either way for at least 90 days (no interaction on any channel and no "
        "message from crier) and no appointment for at least 90 days, none upcoming; customers "
        "never contacted are included.",
        "email",
        "{\"all\": ["
        "{\"field\": \"days_since_last_contact\", \"op\": \"gte\", \"value\": 90}, "
        "{\"field\": \"days_since_last_appointment\", \"op\": \"gte\", \"value\": 90}]}",
    },
    {
        "cancelled_appointments",
        "Cancelled appointments",
        "Their latest appointment (the one scheduled last, upcoming ones included) was "
        "cancelled: nothing has been booked after it.",
        "sms",
        "{\"all\": ["
        "{\"field\": \"last_appointment_status\", \"op\": \"eq\", \"value\": \"cancelled\"}]}",
    },
};

#define SEG_NTEMPLATES (sizeof(seg_template_table) / sizeof(seg_template_table[0]))

const struct seg_template *seg_templates(size_t *count)
{
    *count = SEG_NTEMPLATES;
    return seg_template_table;
}

const struct seg_template *seg_template_find(const char *id)
{
    for (size_t i = 0; id && i < SEG_NTEMPLATES; i++) {
        if (strcmp(seg_template_table[i].id, id) == 0)
            return &seg_template_table[i];
    }
    return NULL;
}
