//! The event handlers: protocol detection, the parsers' events turned into waiting requests and
//! finished spans, trace context, same-host links and lingering server spans.

use super::*;

impl Core {
    /// Tries to recognize the protocol of a connection still `Detecting` with one more chunk.
    /// `Some(held)`: recognized (the parser is set); feed `held`, then this chunk. `None`: not
    /// (yet) recognized; the chunk was held or dropped.
    pub(super) fn detect(
        &mut self,
        conn: &mut Conn,
        raw: RawChunk,
        captured: &[u8],
    ) -> Option<Vec<(RawChunk, Vec<u8>)>> {
        let Parser::Detecting(held) = &mut conn.parser else {
            return Some(Vec::new());
        };
        if captured.is_empty() {
            return None;
        }
        // Fully captured chunks of one direction are tried as one run of bytes.
        let joinable = !held.is_empty()
            && held
                .iter()
                .all(|(r, b)| r.dir == raw.dir && b.len() as u64 == r.total);
        let joined: Vec<u8>;
        let candidate = if joinable {
            let mut j: Vec<u8> = held.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            j.extend_from_slice(captured);
            joined = j;
            joined.as_slice()
        } else {
            captured
        };
        let Some(d) = classify(candidate, raw.dir, conn.role) else {
            // A run of bytes is one attempt however many writes it came in: a head written piece
            // by piece, or the rest of a message a connection was picked up in the middle of
            // (followed from /proc), must not use the attempts up. Runs end at MAX_HELD_BYTES.
            if !joinable {
                conn.detect_attempts += 1;
            }
            if conn.detect_attempts >= MAX_DETECT_ATTEMPTS {
                self.m.detected[5].inc();
                conn.parser = Parser::Opaque;
                return None;
            }
            if !joinable {
                held.clear();
            }
            let held_bytes: usize = held.iter().map(|(_, b)| b.len()).sum();
            if captured.len() as u64 == raw.total && held_bytes + captured.len() <= MAX_HELD_BYTES {
                held.push((raw, captured.to_vec()));
            } else {
                held.clear();
            }
            return None;
        };
        let replay = if joinable {
            std::mem::take(held)
        } else {
            Vec::new()
        };
        if conn.role == Role::Unknown {
            conn.role = d.flow.role_of_process(raw.dir);
        }
        let (index, parser) = match (d.protocol, conn.role) {
            (Protocol::Http1, _) => (0, Parser::Http(Box::new(http1::Http1Connection::new()))),
            (Protocol::MySql, Role::Client) => {
                (2, Parser::MySql(Box::new(mysql::MySqlConnection::new())))
            }
            (Protocol::Redis, Role::Client) => {
                (3, Parser::Redis(Box::new(redis::RedisConnection::new())))
            }
            (Protocol::MySql, _) => (2, Parser::Opaque),
            (Protocol::Redis, _) => (3, Parser::Opaque),
            (Protocol::Http2, _) => (1, Parser::Http2(Box::default())),
            (Protocol::Tls, _) => (4, Parser::Opaque),
        };
        self.m.detected[index].inc();
        conn.parser = parser;
        Some(replay)
    }

    /// Handles (and clears) the events a parser produced for one chunk (`None`: close).
    pub(super) fn dispatch(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        chunk: Option<Chunk>,
        ev: &mut ParserEvents,
    ) {
        if !ev.http.is_empty() {
            self.on_http(conn_id, conn, &mut ev.http, chunk);
        }
        if !ev.http2.is_empty() {
            self.on_http2(conn_id, conn, &ev.http2, chunk);
            ev.http2.clear();
        }
        if !ev.mysql.is_empty() {
            self.on_mysql(conn_id, conn, &ev.mysql, chunk);
            ev.mysql.clear();
        }
        if !ev.redis.is_empty() {
            self.on_redis(conn_id, conn, &ev.redis, chunk);
            ev.redis.clear();
        }
    }

    /// The end time of a response that ended as `end`, produced by `chunk` (or by `close`).
    pub(super) fn end_time(conn: &Conn, chunk: Option<Chunk>, end: End) -> Option<u64> {
        let current = chunk
            .filter(|c| c.flow == Flow::ServerToClient)
            .map(|c| c.end_ns);
        let last = conn.last_end[1];
        match end {
            End::Complete => current.or(last),
            End::Unknown | End::Incomplete => last.or(current),
        }
    }

    /// A database client request (MySQL, Redis) waits for its response: timed from the chunk
    /// that carried it, a child of whatever its thread serves; never linked to a server span.
    pub(super) fn queue_db_request(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        id: u64,
        chunk: Option<Chunk>,
        request: Request,
    ) {
        let (start_ns, tid) = chunk.map(|c| (c.start_ns, c.tid)).unwrap_or((self.now, 0));
        let kctx = chunk.and_then(|c| c.kctx);
        let (ctx, link) = self.client_context((conn_id, id), conn, None, None, tid, kctx, false);
        self.queue(
            conn,
            conn_id,
            Pending {
                id,
                start_ns,
                tid,
                request_ns: 0,
                ctx,
                link,
                request,
            },
        );
    }

    pub(super) fn queue(&mut self, conn: &mut Conn, conn_id: u64, p: Pending) {
        if let Some(old) = conn.push(p, self.cfg.max_pending_requests) {
            self.release(conn_id, conn.role, &old);
            self.m.drop(DropReason::PendingOverflow, 1);
        }
    }

    /// The kernel's context for a request of `conn`, unless an earlier request of it took that
    /// one already (requests pipelined within one read or write share the kernel's).
    fn fresh_kernel_ctx(conn: &mut Conn, kctx: Option<KernelCtx>) -> Option<KernelCtx> {
        let k = kctx?;
        if conn.last_kernel_span == Some(k.span_id) {
            return None;
        }
        conn.last_kernel_span = Some(k.span_id);
        Some(k)
    }

    /// Context for a server request read by `tid`. Its parent, by precedence: the client span
    /// of the same TCP connection on this host; the request's own `traceparent`; the client
    /// span its peer's TCP option named (in-band, any node); none (a new trace). The kernel's
    /// ids are kept where it gave some, since the calls the request makes carry them.
    pub(super) fn server_context(
        &mut self,
        req: RequestRef,
        conn: &mut Conn,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        tid: u32,
        kctx: Option<KernelCtx>,
    ) -> (SpanContext, Option<LinkKey>) {
        let kctx = Self::fresh_kernel_ctx(conn, kctx);
        let key = if self.cfg.link_same_host {
            LinkKey::of_server(&conn.tuple, conn.isns)
        } else {
            None
        };
        let span_id = kctx.map_or_else(|| self.ids.span_id(), |k| k.span_id);
        let ctx = if let Some(((trace_id, parent), client, by)) =
            self.ctx.server_request(key, req, self.now)
        {
            self.linked.push((client, req));
            self.m.same_host_link(by);
            SpanContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                trace_state: String::new(),
            }
        } else if let Some(tp) =
            traceparent.and_then(|v| loupe_protocols::traceparent::parse(v).ok())
        {
            self.m.parents[1].inc();
            SpanContext {
                trace_id: tp.trace_id,
                span_id,
                parent_span_id: Some(tp.parent_id),
                trace_state: tracestate
                    .map(|s| attrs::cut(s, MAX_TRACE_STATE).to_owned())
                    .unwrap_or_default(),
            }
        } else if let Some(k) = kctx {
            if k.from_peer {
                self.m.parents[2].inc();
                // A client on this host: the pair is timed like a same-host pair.
                if let Some(client) = k.parent_id.and_then(|p| self.ctx.option_server(p, req)) {
                    self.linked.push((client, req));
                }
            }
            SpanContext {
                trace_id: k.trace_id,
                span_id,
                parent_span_id: k.parent_id.filter(|_| k.from_peer),
                trace_state: String::new(),
            }
        } else {
            SpanContext {
                trace_id: self.ids.trace_id(),
                span_id,
                parent_span_id: None,
                trace_state: String::new(),
            }
        };
        self.ctx.start_serving(conn.pid, tid, &ctx, req, self.now);
        (ctx, key)
    }

    /// Context for a client request started by `tid`; `link` for protocols whose server side
    /// makes spans (HTTP). Its parent: the request's own `traceparent` (an SDK's), else the
    /// server span its thread serves. With a kernel context the ids are the kernel's, which
    /// went out in the TCP option; the parent is kept only where this builder knows that span.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn client_context(
        &mut self,
        req: RequestRef,
        conn: &mut Conn,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        tid: u32,
        kctx: Option<KernelCtx>,
        link: bool,
    ) -> (SpanContext, Option<LinkKey>) {
        let kctx = Self::fresh_kernel_ctx(conn, kctx);
        let span_id = kctx.map_or_else(|| self.ids.span_id(), |k| k.span_id);
        let serving = self.ctx.serving(tid);
        let ctx = if let Some(tp) =
            traceparent.and_then(|v| loupe_protocols::traceparent::parse(v).ok())
        {
            SpanContext {
                trace_id: tp.trace_id,
                span_id,
                parent_span_id: Some(tp.parent_id),
                trace_state: tracestate
                    .map(|s| attrs::cut(s, MAX_TRACE_STATE).to_owned())
                    .unwrap_or_default(),
            }
        } else if let Some(k) = kctx {
            // The kernel's parent is the server request its thread (or goroutine) serves; the
            // span this builder made of that request may be in another trace (its own
            // `traceparent`), and another thread may have read it.
            let parent = serving
                .filter(|&(_, s)| Some(s) == k.parent_id)
                .or_else(|| {
                    let p = k.parent_id?;
                    Some((self.ctx.in_flight(p)?, p))
                });
            match parent {
                Some((trace_id, parent)) => SpanContext {
                    trace_id,
                    span_id,
                    parent_span_id: Some(parent),
                    trace_state: String::new(),
                },
                None => SpanContext {
                    trace_id: k.trace_id,
                    span_id,
                    parent_span_id: None,
                    trace_state: String::new(),
                },
            }
        } else if let Some((trace_id, parent)) = serving {
            SpanContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                trace_state: String::new(),
            }
        } else {
            SpanContext {
                trace_id: self.ids.trace_id(),
                span_id,
                parent_span_id: None,
                trace_state: String::new(),
            }
        };
        if let Some(server) = kctx.and_then(|k| self.ctx.option_client(k.span_id, req)) {
            self.linked.push((req, server));
        }
        let key = if link && self.cfg.link_same_host {
            LinkKey::of_client(&conn.tuple, conn.isns)
        } else {
            None
        };
        let key = match self.ctx.client_request(key, &ctx, req, self.now) {
            ClientLink::Registered => key,
            ClientLink::ServerWaiting(server, by) => {
                // The server request read first and waited: it gets its parent now.
                self.m.same_host_link(by);
                self.reparents.push((server, ctx.trace_id, ctx.span_id));
                self.linked.push((req, server));
                None
            }
            ClientLink::None => None,
        };
        (ctx, key)
    }

    /// Forgets a request's context entries (it finished or was dropped).
    pub(super) fn release(&mut self, conn_id: u64, role: Role, p: &Pending) {
        self.ctx.forget(p.link, (conn_id, p.id));
        if role == Role::Server {
            self.ctx.stop_serving(p.tid, (conn_id, p.id));
        }
    }

    /// A connection is gone: its waiting requests are dropped, its parser's desyncs counted.
    pub(super) fn forget_conn(&mut self, conn_id: u64, mut conn: Conn, reason: DropReason) {
        let waiting = conn.drain();
        for p in &waiting {
            self.release(conn_id, conn.role, p);
        }
        if !waiting.is_empty() {
            self.m.drop(reason, waiting.len() as u64);
        }
        let desyncs = conn.parser.desyncs();
        match conn.parser {
            Parser::Http(_) => self.m.desyncs[0].add(desyncs),
            Parser::MySql(_) => self.m.desyncs[1].add(desyncs),
            Parser::Redis(_) => self.m.desyncs[2].add(desyncs),
            Parser::Http2(_) => self.m.desyncs[3].add(desyncs),
            Parser::Detecting(_) | Parser::Opaque => {}
        }
    }

    /// An HTTP request (HTTP/1.x, or an HTTP/2 stream) starts, timed by `opened`, the chunk
    /// that carried its first bytes: its trace context (from `traceparent`/`tracestate`, the
    /// kernel, the thread or the peer), then it waits for its response.
    fn open_request(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        id: u64,
        opened: Option<Chunk>,
        (traceparent, tracestate): (Option<&str>, Option<&str>),
        request: Request,
    ) {
        let (start_ns, tid, request_ns, kctx) = opened
            .map(|c| (c.start_ns, c.tid, c.request_ns, c.kctx))
            .unwrap_or((self.now, 0, 0, None));
        let req = (conn_id, id);
        let (ctx, link) = if conn.role == Role::Server {
            self.server_context(req, conn, traceparent, tracestate, tid, kctx)
        } else {
            self.client_context(req, conn, traceparent, tracestate, tid, kctx, true)
        };
        let p = Pending {
            id,
            start_ns,
            tid,
            request_ns,
            ctx,
            link,
            request,
        };
        self.queue(conn, conn_id, p);
    }

    /// An HTTP request's response is over (at `end_ns`): its context entries are released and
    /// `span` makes its span, unless it was never answered (dropped and counted). A server span
    /// whose client may still come out of the ring lingers for it, its thread released.
    fn close_request(
        &mut self,
        conn_id: u64,
        conn: &Conn,
        p: Pending,
        answered: bool,
        end_ns: u64,
        span: impl FnOnce(&mut Self, &Conn, Pending, u64) -> Option<Finished>,
    ) {
        let request = (conn_id, p.id);
        let linger =
            answered && conn.role == Role::Server && self.ctx.server_waiting(p.link, request);
        if linger {
            self.ctx.stop_serving(p.tid, request);
        } else {
            self.release(conn_id, conn.role, &p);
        }
        if !answered {
            self.m.drop(DropReason::NoResponse, 1);
            return;
        }
        let key = p.link;
        let Some(finished) = span(self, conn, p, end_ns) else {
            return;
        };
        if linger {
            self.linger(request, key, finished);
        } else {
            self.finish(finished);
        }
    }

    /// Handles (and takes) the HTTP/1.x parser's events of one chunk.
    pub(super) fn on_http(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &mut Vec<http1::Event>,
        chunk: Option<Chunk>,
    ) {
        for ev in events.drain(..) {
            match ev {
                http1::Event::RequestStart { id, mut head } => {
                    let opened = conn.c2s_open.take().or(chunk);
                    let traceparent = head.headers.traceparent.take();
                    let tracestate = head.headers.tracestate.take();
                    let context = (traceparent.as_deref(), tracestate.as_deref());
                    let request = Request::Http(HttpRequest::from_head(head));
                    self.open_request(conn_id, conn, id, opened, context, request);
                }
                http1::Event::ResponseStart {
                    request_id: Some(id),
                    head,
                } => {
                    if let Some(Pending {
                        request: Request::Http(h),
                        ..
                    }) = conn.get_mut(id)
                    {
                        h.status = Some(head.status);
                    }
                }
                http1::Event::ResponseStart {
                    request_id: None, ..
                } => self.m.drop(DropReason::UnpairedResponse, 1),
                http1::Event::SwitchedToHttp2 { request_id } => {
                    // The 101 is not the answer: stream 1's HTTP/2 response is.
                    conn.upgraded_from = request_id;
                    if let Some(Pending {
                        request: Request::Http(h),
                        ..
                    }) = request_id.and_then(|id| conn.get_mut(id))
                    {
                        h.status = None;
                        h.version = "2";
                    }
                }
                http1::Event::MessageEnd {
                    flow: Flow::ClientToServer,
                    ..
                } => conn.c2s_open = None,
                http1::Event::MessageEnd {
                    flow: Flow::ServerToClient,
                    id: Some(id),
                    end,
                    ..
                } => {
                    let Some(p) = conn.take(id) else { continue };
                    let answered = matches!(&p.request, Request::Http(h) if h.status.is_some());
                    let end_ns = Self::end_time(conn, chunk, end).unwrap_or(p.start_ns);
                    self.close_request(conn_id, conn, p, answered, end_ns, |core, conn, p, end| {
                        core.http_span(conn, p, end)
                    });
                }
                http1::Event::MessageEnd {
                    flow: Flow::ServerToClient,
                    id: None,
                    ..
                } => {}
            }
        }
    }

    /// HTTP/2 streams: each its own request, paired by stream id, so multiplexed streams never
    /// take each other's responses. gRPC streams become RPC spans.
    pub(super) fn on_http2(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &[http2::Event],
        chunk: Option<Chunk>,
    ) {
        for ev in events {
            match ev {
                http2::Event::Request {
                    stream, headers, ..
                } => {
                    self.m.http2_unknown_fields.add(u64::from(headers.unknown));
                    let context = (
                        headers.traceparent.as_deref(),
                        headers.tracestate.as_deref(),
                    );
                    let request = match GrpcRequest::from_h2(headers) {
                        Some(g) => Request::Grpc(g),
                        None => Request::Http(HttpRequest::from_h2(headers)),
                    };
                    let id = conn.http2_key(*stream);
                    self.open_request(conn_id, conn, id, chunk, context, request);
                }
                http2::Event::Response { stream, headers } => {
                    self.m.http2_unknown_fields.add(u64::from(headers.unknown));
                    match conn
                        .get_mut(conn.http2_key(*stream))
                        .map(|p| &mut p.request)
                    {
                        Some(Request::Http(h)) => h.status = headers.status,
                        Some(Request::Grpc(g)) => g.status = headers.status.or(Some(0)),
                        _ => {}
                    }
                }
                http2::Event::End {
                    stream,
                    end,
                    grpc_status,
                    reset,
                    trailers,
                    unknown,
                } => {
                    self.m.http2_unknown_fields.add(u64::from(*unknown));
                    let Some(mut p) = conn.take(conn.http2_key(*stream)) else {
                        continue;
                    };
                    // Trailers make a POST of unknown content type gRPC.
                    if let Request::Http(h) = &p.request
                        && h.maybe_grpc
                        && *trailers
                    {
                        let mut g = GrpcRequest::from_path(&h.target);
                        g.authority = h.host.clone();
                        g.status = h.status;
                        p.request = Request::Grpc(g);
                    }
                    // A reset ends the stream in the chunk that carried it, whichever way.
                    let end_ns = match (reset, chunk) {
                        (Some(_), Some(c)) => c.end_ns,
                        _ => Self::end_time(conn, chunk, *end).unwrap_or(p.start_ns),
                    };
                    let grpc_status = match &p.request {
                        Request::Grpc(g) => grpc_status.or(reset.map(|(_, code)| {
                            grpc_status_of_reset(
                                code,
                                g.timeout_ns,
                                end_ns.saturating_sub(p.start_ns),
                            )
                        })),
                        _ => None,
                    };
                    let answered = match &p.request {
                        Request::Http(h) => h.status.is_some(),
                        Request::Grpc(g) => g.status.is_some() || grpc_status.is_some(),
                        _ => false,
                    };
                    self.close_request(conn_id, conn, p, answered, end_ns, |core, conn, p, end| {
                        match &p.request {
                            Request::Grpc(_) => core.grpc_span(conn, p, end, grpc_status),
                            _ => core.http_span(conn, p, end),
                        }
                    });
                }
            }
        }
    }

    pub(super) fn on_mysql(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &[mysql::Event],
        chunk: Option<Chunk>,
    ) {
        for ev in events {
            match ev {
                mysql::Event::Request { id, command } => {
                    let schema = match &conn.parser {
                        Parser::MySql(p) => p.schema().map(str::to_owned),
                        _ => None,
                    };
                    let request = Request::MySql(emit::mysql_request(
                        command,
                        schema,
                        self.cfg.sanitize_queries,
                    ));
                    self.queue_db_request(conn_id, conn, *id, chunk, request);
                }
                mysql::Event::Response { id, response, end } => {
                    let Some(p) = conn.take(*id) else { continue };
                    self.release(conn_id, conn.role, &p);
                    match (response, end) {
                        (Some(mysql::Response::NoResponse), _) => continue,
                        (None, End::Incomplete) => {
                            self.m.drop(DropReason::NoResponse, 1);
                            continue;
                        }
                        _ => {}
                    }
                    let end_ns = Self::end_time(conn, chunk, *end).unwrap_or(p.start_ns);
                    let result = emit::mysql_result(response.as_ref(), self.cfg.sanitize_queries);
                    self.emit_db(conn, p, "mysql", result, end_ns);
                }
            }
        }
    }

    pub(super) fn on_redis(
        &mut self,
        conn_id: u64,
        conn: &mut Conn,
        events: &[redis::Event],
        chunk: Option<Chunk>,
    ) {
        for ev in events {
            match ev {
                redis::Event::Request { id, command } => {
                    let request =
                        Request::Redis(emit::redis_request(command, self.cfg.sanitize_queries));
                    self.queue_db_request(conn_id, conn, *id, chunk, request);
                }
                redis::Event::Response { id, reply, end } => {
                    let Some(p) = conn.take(*id) else { continue };
                    self.release(conn_id, conn.role, &p);
                    if reply.is_none() && *end == End::Incomplete {
                        self.m.drop(DropReason::NoResponse, 1);
                        continue;
                    }
                    let end_ns = Self::end_time(conn, chunk, *end).unwrap_or(p.start_ns);
                    let result = emit::redis_result(reply.as_ref(), self.cfg.sanitize_queries);
                    self.emit_db(conn, p, "redis", result, end_ns);
                }
            }
        }
    }

    /// Parks a finished server span that still waits for its same-host client (see
    /// `Lingering`); past MAX_LINGERING it goes out at once.
    pub(super) fn linger(&mut self, request: RequestRef, key: Option<LinkKey>, finished: Finished) {
        if self.lingering.slots() < MAX_LINGERING {
            self.lingering.push(Lingering {
                request,
                key,
                since_ns: self.now,
                finished,
            });
        } else {
            self.ctx.forget(key, request);
            self.finish(finished);
        }
    }

    /// The kernel reported CPU samples of the request `tag` (its response write carried the
    /// flag): its span goes into the sampled tier of the span index.
    pub(super) fn note_sampled(&mut self, tag: RequestTag) {
        if !self.publishing {
            return;
        }
        if self.sampled.len() >= MAX_SAMPLED_WAITING {
            // Spans that never finished (dropped requests) must not pile up.
            self.sampled.clear();
        }
        self.sampled.insert(tag);
    }

    /// Publishes a finished server span for the profiler's drain; returns its
    /// `pyroscope.profile.id`.
    pub(super) fn publish_server_span(
        &mut self,
        pid: u32,
        p: &Pending,
        name: &Text,
    ) -> Option<String> {
        if p.request_ns == 0 {
            return None;
        }
        let label = SpanLabel {
            trace_id: p.ctx.trace_id,
            span_id: p.ctx.span_id,
            name: match name {
                Text::Shared(name) => name.clone(),
                other => Arc::from(&**other),
            },
        };
        let id = label.span_id_hex();
        if self.publishing {
            let tag = (pid, p.request_ns);
            self.published.push(Published {
                tag,
                sampled: self.sampled.remove(&tag),
                span: Arc::new(label),
            });
        }
        Some(id)
    }

    /// Queues a span for the next flush, within `max_finished_spans`.
    pub(super) fn finish(&mut self, finished: Finished) {
        if self.finished.len() >= self.cfg.max_finished_spans {
            self.m.drop(DropReason::BufferFull, 1);
            return;
        }
        // Its memory, counted now while it is at hand, for the export queue's byte bound.
        let bytes = finished.span.approx_bytes();
        self.finished.push((finished, bytes));
    }
}

/// The gRPC status a call reset by RST_STREAM (or refused by GOAWAY) ends with, as gRPC's
/// HTTP/2 transport maps error codes; a cancel at the deadline the client sent
/// (`grpc-timeout`, within a tenth of it or 10 ms) is DEADLINE_EXCEEDED, as the client reports.
pub(super) fn grpc_status_of_reset(code: u32, timeout_ns: Option<u64>, elapsed_ns: u64) -> u32 {
    match code {
        // REFUSED_STREAM: not processed, may be retried.
        0x7 => 14,
        // CANCEL: the client gave up, at its deadline or not.
        0x8 if timeout_ns
            .is_some_and(|t| elapsed_ns >= t.saturating_sub((t / 10).min(10_000_000))) =>
        {
            4
        }
        0x8 => 1,
        // ENHANCE_YOUR_CALM.
        0xb => 8,
        // INADEQUATE_SECURITY.
        0xc => 7,
        _ => 13,
    }
}
