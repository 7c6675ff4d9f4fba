#!/usr/bin/env node
// Socket.IO 4 peer for the loadgen comparison: the same chat semantics as Tern, as plainly as a
// Socket.IO user would write them, so the numbers compare systems rather than tunings.
//
//   - Rooms are conversations. A client names the rooms it belongs to in the handshake
//     (`auth: { user, rooms: [...] }`); the server joins it to all of them before it answers the
//     Socket.IO CONNECT, so a connected client is already a member everywhere (Tern's session is
//     likewise ready in all of its conversations once it is authenticated).
//   - `send` with `{ room, payload }` and an acknowledgement callback: the server checks that the
//     sender is a member of `room` (Tern checks membership on every write), broadcasts
//     `msg` `{ room, payload }` to the room *excluding the sender* (`socket.to(room)`), then
//     acknowledges with `{ ok: true }`. Payloads are opaque base64 strings, never parsed.
//   - WebSocket transport only, no per-message deflate (Tern's WebSocket does not compress).
//   - Single process, in-memory adapter (no Redis): the fairest single-node counterpart of Tern's
//     embedded mode. Nothing is persisted and nothing is replayed (connection state recovery is
//     off), so unlike Tern a message is acknowledged without being durable.
//
// Usage: node server.js --cert CERT.pem --key KEY.pem [--host 127.0.0.1] [--port 0]
// (or SOCKETIO_CERT, SOCKETIO_KEY, SOCKETIO_HOST, SOCKETIO_PORT). Port 0 picks a free port.
// Prints one line "socketio listening on HOST:PORT" on stdout once it accepts connections.

"use strict";

const fs = require("node:fs");
const https = require("node:https");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const opts = {
    cert: process.env.SOCKETIO_CERT,
    key: process.env.SOCKETIO_KEY,
    host: process.env.SOCKETIO_HOST || "127.0.0.1",
    port: Number(process.env.SOCKETIO_PORT || 0),
  };
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i];
    const value = argv[i + 1];
    switch (arg) {
      case "--cert": opts.cert = value; i++; break;
      case "--key": opts.key = value; i++; break;
      case "--host": opts.host = value; i++; break;
      case "--port": opts.port = Number(value); i++; break;
      case "-h":
      case "--help":
        process.stdout.write("usage: node server.js --cert CERT.pem --key KEY.pem [--host H] [--port P]\n");
        process.exit(0);
        break;
      default:
        process.stderr.write(`unknown argument ${arg}\n`);
        process.exit(2);
    }
  }
  if (!opts.cert || !opts.key) {
    process.stderr.write("--cert and --key (or SOCKETIO_CERT/SOCKETIO_KEY) are required: TLS only\n");
    process.exit(2);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    process.stderr.write(`bad port ${opts.port}\n`);
    process.exit(2);
  }
  return opts;
}

// Bounds that keep a misbehaving client from making the server do unbounded work; they mirror
// Tern's defaults (64 KiB frames) and are far above what the benchmark sends.
const MAX_MESSAGE_BYTES = 64 * 1024;
const MAX_ROOMS_PER_CLIENT = 10000;
const MAX_ROOM_NAME = 128;

function validRoom(room) {
  return typeof room === "string" && room.length > 0 && room.length <= MAX_ROOM_NAME;
}

const opts = parseArgs(process.argv);
const httpsServer = https.createServer({
  cert: fs.readFileSync(opts.cert),
  key: fs.readFileSync(opts.key),
});

const io = new Server(httpsServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: MAX_MESSAGE_BYTES,
  // Socket.IO's defaults; the client adapter follows whatever the open packet announces. The
  // environment overrides exist so tests can see a heartbeat within seconds.
  pingInterval: Number(process.env.SOCKETIO_PING_INTERVAL_MS || 25000),
  pingTimeout: Number(process.env.SOCKETIO_PING_TIMEOUT_MS || 20000),
});

// Refuse malformed handshakes before the CONNECT is acknowledged.
io.use((socket, next) => {
  const rooms = socket.handshake.auth && socket.handshake.auth.rooms;
  if (!Array.isArray(rooms) || rooms.length > MAX_ROOMS_PER_CLIENT || !rooms.every(validRoom)) {
    next(new Error("auth.rooms must be an array of room names"));
    return;
  }
  next();
});

io.on("connection", (socket) => {
  // Runs synchronously right after the CONNECT packet is queued, in the same tick, so no
  // broadcast can be processed between the client being told it is connected and it joining.
  socket.join(socket.handshake.auth.rooms);

  socket.on("send", (msg, ack) => {
    if (typeof ack !== "function") {
      return; // every benchmark send asks for an acknowledgement; ignore anything else
    }
    if (!msg || !validRoom(msg.room) || typeof msg.payload !== "string") {
      ack({ ok: false, error: "bad message" });
      return;
    }
    if (!socket.rooms.has(msg.room)) {
      ack({ ok: false, error: "not a member" });
      return;
    }
    socket.to(msg.room).emit("msg", { room: msg.room, payload: msg.payload });
    ack({ ok: true });
  });
});

httpsServer.on("error", (err) => {
  process.stderr.write(`socketio server error: ${err.message}\n`);
  process.exit(1);
});

httpsServer.listen(opts.port, opts.host, () => {
  const addr = httpsServer.address();
  process.stdout.write(`socketio listening on ${addr.address}:${addr.port}\n`);
});

function shutdown() {
  io.close(() => process.exit(0));
  // Do not hang on clients that never finish closing.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
