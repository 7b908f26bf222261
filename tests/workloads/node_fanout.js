// The Node.js service of tests/tests/node_spans.rs: every `GET /front/ID` calls
// `GET /api/users/ID` on another service (keep-alive agent, up to 8 sockets) from the request's
// callback, and answers once that call has. One event loop thread serves every request, so
// requests in flight interleave on it: what the agent's thread-based parenting is measured on.
// Usage: node node_fanout.js PORT BACK_HOST:BACK_PORT; prints "listening" when ready.
'use strict';
const http = require('http');

const [port, back] = process.argv.slice(2);
const [backHost, backPort] = back.split(':');
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

http
  .createServer((req, res) => {
    const id = req.url.split('/').pop();
    const call = http.get(
      { host: backHost, port: backPort, path: `/api/users/${id}`, agent },
      (back) => {
        back.resume();
        back.on('end', () => {
          const body = `front ${id}: back ${back.statusCode}\n`;
          res.writeHead(200, { 'Content-Length': Buffer.byteLength(body) });
          res.end(body);
        });
      },
    );
    call.on('error', (e) => {
      res.writeHead(502);
      res.end(`${e}\n`);
    });
  })
  .listen(Number(port), '127.0.0.1', () => console.log('listening'));
