// The Socket.IO peer for agentwire's load tool: rooms over the Redis adapter, on the same
// Valkey as agentwire. Run two of these (PORT=3001, PORT=3002): publishers on one, subscribers
// on the other, so every message crosses Valkey pub/sub as agentwire's live path does.
//   join(room)                -> the socket joins the room, answered with joined(room)
//   publish(room, text)       -> every socket in the room, on every node, gets msg(text)
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3001);
const url = process.env.VALKEY_URL || "redis://127.0.0.1:6379";

async function main() {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = createServer();
  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    socket.on("join", (room) => {
      socket.join(room);
      socket.emit("joined", room);
    });
    socket.on("publish", (room, text) => {
      io.to(room).emit("msg", text);
    });
  });
  httpServer.listen(port, "127.0.0.1", () => {
    console.log(`socket.io peer listening on 127.0.0.1:${port}`);
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
