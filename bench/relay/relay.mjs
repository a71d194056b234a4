// The baseline of the benchmarks: a minimal in-memory relay on Node.js `ws` that speaks the
// same frames as Tertulia's /api/v2/ws (hello → ready, send → ack + message to every member,
// ping → pong), with no persistence, no broker and no authentication. Membership is what each
// connection names in its hello's `resume`. Each message is serialised once for all members.
//
//   PORT=8099 node relay.mjs

import { randomUUID } from 'node:crypto';
import { WebSocketServer } from 'ws';

const port = Number(process.env.PORT ?? 8099);
const members = new Map(); // conversation id -> Set of sockets
const lastSeq = new Map(); // conversation id -> last seq

const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/api/v2/ws', maxPayload: 64 * 1024 });

function error(socket, code, message, clientMsgId) {
  socket.send(JSON.stringify({ type: 'error', code, message, ...(clientMsgId ? { client_msg_id: clientMsgId } : {}) }));
}

wss.on('connection', (socket) => {
  let user = null;
  const joined = [];
  socket.on('message', (data, binary) => {
    let frame;
    try {
      frame = binary ? null : JSON.parse(data);
    } catch {
      frame = null;
    }
    if (!frame || typeof frame.type !== 'string') return error(socket, 'invalid_argument', 'a frame is one JSON object with a type');
    if (user === null) {
      if (frame.type !== 'hello' || typeof frame.token !== 'string') {
        error(socket, 'unauthenticated', 'say hello first');
        return socket.close(4401);
      }
      user = frame.token;
      for (const conversation of Object.keys(frame.resume ?? {})) {
        if (!members.has(conversation)) members.set(conversation, new Set());
        members.get(conversation).add(socket);
        joined.push(conversation);
      }
      return socket.send(JSON.stringify({ type: 'ready', user_id: user, session_id: randomUUID() }));
    }
    switch (frame.type) {
      case 'send': {
        const room = members.get(frame.conversation_id);
        if (!room?.has(socket)) return error(socket, 'not_found', 'no such conversation', frame.client_msg_id);
        const seq = (lastSeq.get(frame.conversation_id) ?? 0) + 1;
        lastSeq.set(frame.conversation_id, seq);
        const message = {
          id: randomUUID(),
          conversation_id: frame.conversation_id,
          seq,
          sender_id: user,
          client_msg_id: frame.client_msg_id,
          content: frame.content,
          reactions: [],
          sent_at: new Date().toISOString(),
          deleted: false,
        };
        socket.send(JSON.stringify({ type: 'ack', client_msg_id: frame.client_msg_id, message }));
        const text = JSON.stringify({ type: 'message', conversation_id: frame.conversation_id, message });
        for (const member of room) member.send(text);
        return;
      }
      case 'ping':
        return socket.send('{"type":"pong"}');
      case 'read':
      case 'typing':
        return;
      default:
        return error(socket, 'invalid_argument', `unknown frame type ${frame.type}`);
    }
  });
  socket.on('close', () => {
    for (const conversation of joined) members.get(conversation)?.delete(socket);
  });
});

wss.on('listening', () => console.log(`baseline relay on ws://127.0.0.1:${port}/api/v2/ws`));
