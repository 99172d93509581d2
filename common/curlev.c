/* curlev.c - curl's multi_socket API on libevent (see curlev.h). */
#include "curlev.h"

#include <stdlib.h>

#include "xalloc.h"

/* The event of one socket curl watches (curl_multi_assign'ed to it). Kept
 * for the next socket when curl lets go of it: a keep-alive connection is
 * let go of and watched again on every request. */
struct curlev_sock {
    struct event *ev;
    short kind;                /* what ev watches */
    struct curlev_sock *next;  /* free list */
    struct curlev_sock *every; /* all of them, freed with the curlev */
};

struct curlev {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    curlev_done_cb done;
    curlev_after_cb after;
    void *arg;
    struct curlev_sock *free_socks, *all_socks;
};

static void finished(struct curlev *cv)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(cv->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode result = m->data.result;
        curl_multi_remove_handle(cv->multi, easy);
        cv->done(cv->arg, easy, result);
    }
    if (cv->after)
        cv->after(cv->arg);
}

static void sock_event_cb(evutil_socket_t fd, short kind, void *arg)
{
    struct curlev *cv = arg;
    int action =
        ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(cv->multi, fd, action, &running);
    finished(cv);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct curlev *cv = userp;
    struct curlev_sock *sk = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            event_del(sk->ev);
            sk->next = cv->free_socks;
            cv->free_socks = sk;
        }
        curl_multi_assign(cv->multi, s, NULL);
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                         ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (!sk) {
        sk = cv->free_socks;
        if (sk) {
            cv->free_socks = sk->next;
        } else {
            sk = xcalloc(1, sizeof(*sk));
            sk->ev = event_new(cv->base, -1, 0, NULL, NULL);
            if (!sk->ev) {
                free(sk);
                return -1; /* curl fails the transfer */
            }
            sk->every = cv->all_socks;
            cv->all_socks = sk;
        }
        curl_multi_assign(cv->multi, s, sk);
    } else if (sk->kind == kind) {
        return 0;
    } else {
        event_del(sk->ev);
    }
    event_assign(sk->ev, cv->base, s, kind, sock_event_cb, cv);
    sk->kind = kind;
    event_add(sk->ev, NULL);
    return 0;
}

static void timer_event_cb(evutil_socket_t fd, short kind, void *arg)
{
    (void)fd;
    (void)kind;
    curlev_kick(arg);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct curlev *cv = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(cv->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(cv->timer, &tv);
    return 0;
}

struct curlev *curlev_new(struct event_base *base, curlev_done_cb done, curlev_after_cb after,
                          void *arg)
{
    CURLM *multi = curl_multi_init();
    if (!multi)
        return NULL;
    struct curlev *cv = xcalloc(1, sizeof(*cv));
    cv->base = base;
    cv->multi = multi;
    cv->done = done;
    cv->after = after;
    cv->arg = arg;
    cv->timer = evtimer_new(base, timer_event_cb, cv);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, cv);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, cv);
    return cv;
}

CURLM *curlev_multi(const struct curlev *cv)
{
    return cv->multi;
}

void curlev_kick(struct curlev *cv)
{
    int running = 0;
    curl_multi_socket_action(cv->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    finished(cv);
}

void curlev_free(struct curlev *cv)
{
    if (!cv)
        return;
    curl_multi_cleanup(cv->multi);
    while (cv->all_socks) {
        struct curlev_sock *sk = cv->all_socks;
        cv->all_socks = sk->every;
        event_free(sk->ev);
        free(sk);
    }
    event_free(cv->timer);
    free(cv);
}
