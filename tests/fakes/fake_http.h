/* fake_http.h - a small HTTP/1.1 server on plain libevent events, for the fakes' hot paths.
 *
 * What evhttp does for a loopback test server, at a fraction of its cost per request: one
 * read buffer per connection that requests are parsed in place from (no allocation per
 * request or header), replies written with one send() straight from the handler, and a
 * write event registered only while the socket would block (so a normal reply costs no
 * epoll_ctl). Replies are byte for byte what libevent 2.1's evhttp sends for the same
 * request and headers: status line in the request's version, the handler's headers in
 * order, then Date (HTTP/1.1), Connection: keep-alive (HTTP/1.0 keep-alive), Content-Length
 * and Connection: close (when the request asked for it); evhttp's HTML error pages for
 * malformed requests (400), bodies over the limit (413), an Expect other than 100-continue
 * (417) and methods other than GET, POST, HEAD, PUT, DELETE, OPTIONS, PATCH (501). Unlike
 * evhttp, a reply to HEAD carries no body.
 *
 * Keep-alive as evhttp: HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with
 * "Connection: keep-alive". Pipelined requests are answered in order, one at a time: while
 * a request is held (its handler returned without answering) the connection is not read.
 * Bodies by Content-Length or chunked; Expect: 100-continue is answered. Single-threaded. */
#ifndef CRIER_FAKE_HTTP_H
#define CRIER_FAKE_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

struct fhttp_server;
struct fhttp_request;

enum fhttp_method {
    FHTTP_GET = 0,
    FHTTP_POST,
    FHTTP_HEAD,
    FHTTP_PUT,
    FHTTP_DELETE,
    FHTTP_OPTIONS,
    FHTTP_PATCH,
};

/* Called once per request. The handler answers with fhttp_send_reply or fhttp_drop, now
 * or later; until then the request (and everything its getters return) stays valid. */
typedef void (*fhttp_request_cb)(struct fhttp_request *req, void *arg);
/* The client closed the connection of a request not yet answered; answer it with
 * fhttp_drop. */
typedef void (*fhttp_closed_cb)(struct fhttp_request *req, void *arg);

/* Listens on host ("127.0.0.1", "::1", ...) and port (0: any free one); NULL on failure
 * with errno set. Bodies over max_body bytes are answered 413. */
struct fhttp_server *fhttp_server_new(struct event_base *base, const char *host, int port,
                                      size_t max_body, fhttp_request_cb cb, void *arg);
/* The bound port, or -1. */
int fhttp_server_port(const struct fhttp_server *srv);
/* Closes the listener and every connection; requests not yet answered are freed. */
void fhttp_server_free(struct fhttp_server *srv);

enum fhttp_method fhttp_request_method(const struct fhttp_request *req);
/* The request target's path (not decoded; "" for none) and query (NULL for none). */
const char *fhttp_request_path(const struct fhttp_request *req);
const char *fhttp_request_query(const struct fhttp_request *req);
/* The first header of that name (case-insensitive), or NULL. */
const char *fhttp_request_header(const struct fhttp_request *req, const char *name);
/* The body (not NUL-terminated; "" when empty) and its length. */
const char *fhttp_request_body(const struct fhttp_request *req, size_t *len);

/* Adds a reply header; name and value must not contain CR or LF. */
void fhttp_add_header(struct fhttp_request *req, const char *name, const char *value);
/* Sends the reply (reason NULL: the standard phrase) and ends the request. */
void fhttp_send_reply(struct fhttp_request *req, int status, const char *reason, const char *body,
                      size_t len);
/* Ends the request without a reply: closes its connection. */
void fhttp_drop(struct fhttp_request *req);
/* Asks for cb when the client closes the connection of this unanswered request; false
 * when the event backend cannot tell (no EV_CLOSED) or the event cannot be added. */
bool fhttp_notify_close(struct fhttp_request *req, fhttp_closed_cb cb, void *arg);

#endif
