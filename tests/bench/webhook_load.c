/* webhook_load.c - closed-loop HTTP load for the signed Twilio status webhook
 * (tests/bench/bench_webhooks.sh): C keep-alive connections on loopback, each
 * sending a validly signed status callback as soon as the previous answer is
 * in, for a bounded time. Every request is a distinct callback (its own
 * MessageSid), signed for the public URL the API is configured with.
 *
 *   webhook-load --connect 127.0.0.1:8080 --url https://hooks.example/v1/webhooks/1/twilio/status
 *                --token TOKEN --sid AC... [--connections 64] [--duration 10] [--warmup 1]
 *                [--expect 204]
 *
 * Prints "name value unit" lines: requests, errors, rate, p50/p90/p99/max
 * latency. Exits 1 when any answer was not the expected status. Single
 * thread, epoll. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "websig.h"

#define NREQ 4096 /* distinct pre-signed requests, used in turn */
#define RBUF 4096

struct conn {
    int fd;
    const char *req; /* request being sent */
    size_t reqlen, sent;
    char rbuf[RBUF];
    size_t rlen;
    double started;
    bool busy;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static char *reqs[NREQ];
static size_t reqlens[NREQ];
static size_t next_req;

static void conn_send_next(struct conn *c)
{
    c->req = reqs[next_req % NREQ];
    c->reqlen = reqlens[next_req % NREQ];
    next_req++;
    c->sent = 0;
    c->rlen = 0;
    c->busy = true;
    c->started = now_s();
    while (c->sent < c->reqlen) {
        ssize_t n = write(c->fd, c->req + c->sent, c->reqlen - c->sent);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break; /* EPOLLOUT would finish it; loopback buffers never get here */
        if (n <= 0)
            die("write");
        c->sent += (size_t)n;
    }
}

/* Returns the status when rbuf holds a whole answer, 0 when more is needed. */
static int answer_complete(struct conn *c, size_t *used)
{
    c->rbuf[c->rlen < RBUF ? c->rlen : RBUF - 1] = '\0';
    char *end = strstr(c->rbuf, "\r\n\r\n");
    if (!end)
        return 0;
    size_t head = (size_t)(end - c->rbuf) + 4;
    long clen = 0;
    const char *cl = strcasestr(c->rbuf, "\r\nContent-Length:");
    if (cl && cl < end)
        clen = strtol(cl + 17, NULL, 10);
    if (c->rlen < head + (size_t)clen)
        return 0;
    *used = head + (size_t)clen;
    return (int)strtol(c->rbuf + 9, NULL, 10);
}

int main(int argc, char **argv)
{
    const char *connect_to = NULL, *url = NULL, *token = NULL, *sid = NULL;
    int nconn = 64, expect = 204;
    double duration = 10, warmup = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--connect"))
            connect_to = argv[i + 1];
        else if (!strcmp(argv[i], "--url"))
            url = argv[i + 1];
        else if (!strcmp(argv[i], "--token"))
            token = argv[i + 1];
        else if (!strcmp(argv[i], "--sid"))
            sid = argv[i + 1];
        else if (!strcmp(argv[i], "--connections"))
            nconn = (int)strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--duration"))
            duration = strtod(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--warmup"))
            warmup = strtod(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--expect"))
            expect = (int)strtol(argv[i + 1], NULL, 10);
    }
    if (!connect_to || !url || !token || !sid || nconn < 1 || nconn > 1024 || duration <= 0 ||
        duration > 300) {
        fprintf(stderr, "usage: webhook-load --connect HOST:PORT --url PUBLIC_URL --token T "
                        "--sid AC... [--connections N<=1024] [--duration S<=300] [--warmup S] "
                        "[--expect STATUS]\n");
        return 2;
    }
    const char *colon = strrchr(connect_to, ':');
    const char *path = strstr(url, "://");
    path = path ? strchr(path + 3, '/') : NULL;
    if (!colon || !path) {
        fprintf(stderr, "webhook-load: bad --connect or --url\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)strtol(colon + 1, NULL, 10))};
    char host[64];
    snprintf(host, sizeof(host), "%.*s", (int)(colon - connect_to), connect_to);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "webhook-load: --connect needs an IPv4 address\n");
        return 2;
    }

    /* Distinct, validly signed status callbacks. */
    static const char *const statuses[] = {"sent", "delivered", "undelivered", "failed"};
    for (int i = 0; i < NREQ; i++) {
        char body[512], sig[WEBSIG_TWILIO_SIG_SIZE];
        snprintf(body, sizeof(body),
                 "SmsSid=SM%032x&SmsStatus=%s&MessageStatus=%s&To=%%2B1555%07d&MessageSid=SM%032x&"
                 "AccountSid=%s&From=%%2B15017122661&ApiVersion=2010-04-01",
                 i, statuses[i % 4], statuses[i % 4], i, i, sid);
        websig_twilio_sign(token, url, body, strlen(body), sig);
        char *r = NULL;
        int n = asprintf(&r,
                         "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: TwilioProxy/1.1\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n"
                         "X-Twilio-Signature: %s\r\nContent-Length: %zu\r\n\r\n%s",
                         path, connect_to, sig, strlen(body), body);
        if (n < 0)
            die("asprintf");
        reqs[i] = r;
        reqlens[i] = (size_t)n;
    }

    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    struct conn *conns = calloc((size_t)nconn, sizeof(*conns));
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
            die("epoll_ctl");
    }

    size_t cap = 1 << 20, nlat = 0;
    double *lat = malloc(cap * sizeof(*lat));
    long errors = 0, done = 0;
    int busy = 0;
    double t0 = now_s(), measure_from = t0 + warmup, stop_at = measure_from + duration;
    double hard_stop = stop_at + 10;
    for (int i = 0; i < nconn; i++, busy++)
        conn_send_next(&conns[i]);

    struct epoll_event evs[256];
    while (busy > 0) {
        double t = now_s();
        if (t > hard_stop) {
            fprintf(stderr, "webhook-load: %d requests unanswered 10 s after the end\n", busy);
            errors += busy;
            break;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            ssize_t got = read(c->fd, c->rbuf + c->rlen, RBUF - 1 - c->rlen);
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (got <= 0) {
                fprintf(stderr, "webhook-load: the server closed a connection\n");
                return 1;
            }
            c->rlen += (size_t)got;
            size_t used = 0;
            int status = answer_complete(c, &used);
            if (!status)
                continue;
            double end = now_s();
            if (status != expect) {
                if (errors < 3)
                    fprintf(stderr, "webhook-load: answer %d: %.200s\n", status, c->rbuf);
                errors++;
            }
            if (c->started >= measure_from && end <= stop_at) {
                if (nlat == cap) {
                    cap *= 2;
                    lat = realloc(lat, cap * sizeof(*lat));
                    if (!lat)
                        die("realloc");
                }
                lat[nlat++] = end - c->started;
            }
            done++;
            c->busy = false;
            busy--;
            if (end < stop_at) {
                conn_send_next(c);
                busy++;
            }
        }
    }
    double elapsed = (stop_at < now_s() ? stop_at : now_s()) - measure_from;
    qsort(lat, nlat, sizeof(*lat), cmp_double);
#define PCT(p) (nlat ? lat[(size_t)((double)(nlat - 1) * (p))] * 1000.0 : 0.0)
    printf("webhook_requests %zu requests\n", nlat);
    printf("webhook_errors %ld requests\n", errors);
    printf("webhook_rate %.0f requests/s\n", elapsed > 0 ? (double)nlat / elapsed : 0.0);
    printf("webhook_latency_p50 %.2f ms\n", PCT(0.50));
    printf("webhook_latency_p90 %.2f ms\n", PCT(0.90));
    printf("webhook_latency_p99 %.2f ms\n", PCT(0.99));
    printf("webhook_latency_max %.2f ms\n", nlat ? lat[nlat - 1] * 1000.0 : 0.0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("cpu_load_generator %.2f cores\n", cpu / (now_s() - t0));
    for (int i = 0; i < nconn; i++)
        close(conns[i].fd);
    for (int i = 0; i < NREQ; i++)
        free(reqs[i]);
    free(conns);
    free(lat);
    close(ep);
    (void)done;
    return errors ? 1 : 0;
}
