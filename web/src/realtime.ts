// The real-time connection: WebSocket first, Server-Sent Events when a socket cannot be held.
// Either way it resumes after every drop from the last `seq` seen per conversation, so nothing
// is missed; the caller dedupes by (conversation_id, seq).

import { API, type Session } from './api';
import type { Content, Frame, Message } from './types';

export type Transport = 'websocket' | 'sse';
export type Status = 'connecting' | 'online' | 'offline';

interface Pending {
  conversationId: string;
  content: Content;
  resolve: (message: Message) => void;
  reject: (error: Error) => void;
  timer: number;
}

/** How long a send waits for its ack before it is retried over REST (same client_msg_id, so
 * the retry cannot create a second message). */
const ACK_TIMEOUT_MS = 8000;
/** `WebSocket.OPEN`, spelled out: `WebSocket` itself may not exist (the SSE fallback's case). */
const OPEN = 1;

export class Realtime {
  transport: Transport;
  status: Status = 'connecting';
  private socket: WebSocket | null = null;
  private sse: AbortController | null = null;
  private lastEventId: string | null = null;
  private attempt = 0;
  private retryTimer = 0;
  private stopped = false;
  private socketFailures = 0;
  private pending = new Map<string, Pending>();

  constructor(
    private readonly session: Session,
    /** The last `seq` seen of each conversation, read at every (re)connection. */
    private readonly resume: () => Record<string, number>,
    private readonly onFrame: (frame: Frame) => void,
    private readonly onStatus: (status: Status, transport: Transport) => void,
  ) {
    this.transport = typeof WebSocket === 'function' ? 'websocket' : 'sse';
    window.addEventListener('offline', this.dropped);
    window.addEventListener('online', this.reconnectNow);
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    window.removeEventListener('offline', this.dropped);
    window.removeEventListener('online', this.reconnectNow);
    this.close();
    for (const p of this.pending.values()) window.clearTimeout(p.timer);
    this.pending.clear();
  }

  /** Sends a message; resolves with the stored message once it is acknowledged. */
  send(conversationId: string, clientMsgId: string, content: Content): Promise<Message> {
    return new Promise((resolve, reject) => {
      const pending: Pending = { conversationId, content, resolve, reject, timer: 0 };
      this.pending.set(clientMsgId, pending);
      if (this.live()) {
        this.socket!.send(
          JSON.stringify({ type: 'send', conversation_id: conversationId, client_msg_id: clientMsgId, content }),
        );
        pending.timer = window.setTimeout(() => this.viaRest(clientMsgId), ACK_TIMEOUT_MS);
      } else {
        this.viaRest(clientMsgId);
      }
    });
  }

  /** The socket is up and past its handshake. */
  private live(): boolean {
    return this.status === 'online' && this.socket?.readyState === OPEN;
  }

  read(conversationId: string, seq: number): void {
    if (this.live()) {
      this.socket!.send(JSON.stringify({ type: 'read', conversation_id: conversationId, seq }));
    } else {
      this.session.call('POST', `/conversations/${conversationId}/read`, { seq }).catch(() => {});
    }
  }

  typing(conversationId: string): void {
    if (this.live()) {
      this.socket!.send(JSON.stringify({ type: 'typing', conversation_id: conversationId }));
    }
  }

  /** A send over REST: the fallback transport's way, and the retry of an unanswered frame. */
  private viaRest(clientMsgId: string): void {
    const p = this.pending.get(clientMsgId);
    if (!p) return;
    window.clearTimeout(p.timer);
    this.session
      .call<Message>('POST', `/conversations/${p.conversationId}/messages`, {
        client_msg_id: clientMsgId,
        content: p.content,
      })
      .then(
        (message) => this.settle(clientMsgId, message),
        (error: Error) => {
          if ((error as { status?: number }).status === 0) {
            // Offline: try again when the connection is back.
            p.timer = window.setTimeout(() => this.viaRest(clientMsgId), 2000);
            return;
          }
          this.pending.delete(clientMsgId);
          p.reject(error);
        },
      );
  }

  private settle(clientMsgId: string, message: Message): void {
    const p = this.pending.get(clientMsgId);
    if (!p) return;
    window.clearTimeout(p.timer);
    this.pending.delete(clientMsgId);
    p.resolve(message);
  }

  private setStatus(status: Status): void {
    this.status = status;
    this.onStatus(status, this.transport);
  }

  private connect(): void {
    if (this.stopped) return;
    this.setStatus('connecting');
    if (this.transport === 'websocket') this.openSocket();
    else void this.openEvents();
  }

  private close(): void {
    if (this.socket) {
      const s = this.socket;
      this.socket = null;
      s.onclose = s.onmessage = s.onerror = s.onopen = null;
      s.close(1000);
    }
    this.sse?.abort();
    this.sse = null;
  }

  private readonly dropped = (): void => {
    this.close();
    this.setStatus('offline');
    this.retry();
  };

  private readonly reconnectNow = (): void => {
    if (this.stopped) return;
    window.clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.close();
    this.connect();
  };

  /** Jittered exponential backoff: 0.5 s doubling to 30 s. */
  private retry(): void {
    if (this.stopped) return;
    window.clearTimeout(this.retryTimer);
    const base = Math.min(500 * 2 ** this.attempt, 30_000);
    this.attempt++;
    this.retryTimer = window.setTimeout(() => {
      // Offline, an attempt can only fail: the `online` event reconnects at once.
      if (navigator.onLine) this.connect();
    }, base / 2 + Math.random() * (base / 2));
  }

  private openSocket(): void {
    let opened = false;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${API}/ws`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = async () => {
      opened = true;
      try {
        const token = await this.session.token();
        socket.send(JSON.stringify({ type: 'hello', token, resume: this.resume() }));
      } catch {
        socket.close();
      }
    };
    socket.onmessage = (event) => {
      const frame = JSON.parse(String(event.data)) as Frame;
      if (frame.type === 'ready') {
        this.attempt = 0;
        this.socketFailures = 0;
        this.setStatus('online');
        // Sends that were waiting for a connection go now (idempotent by client_msg_id).
        for (const id of this.pending.keys()) this.viaRest(id);
      }
      this.dispatch(frame);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.setStatus(navigator.onLine ? 'connecting' : 'offline');
      if (event.code === 4401) this.session.expire();
      if (opened) {
        this.retry();
        return;
      }
      // A socket that never opened. If the server answers plain HTTP meanwhile, something on
      // the way (a proxy) refuses WebSockets: after two such failures, use SSE. A network or
      // server that is down is just retried.
      void this.session.get('/me').then(
        () => {
          if (++this.socketFailures >= 2) this.transport = 'sse';
          this.retry();
        },
        () => this.retry(),
      );
    };
  }

  private dispatch(frame: Frame): void {
    if (frame.type === 'ack') this.settle(frame.client_msg_id, frame.message);
    if (frame.type === 'error' && frame.client_msg_id) {
      const p = this.pending.get(frame.client_msg_id);
      if (p) {
        window.clearTimeout(p.timer);
        this.pending.delete(frame.client_msg_id);
        p.reject(new Error(frame.message));
      }
    }
    this.onFrame(frame);
  }

  /** SSE over fetch (EventSource cannot send the Authorization header). */
  private async openEvents(): Promise<void> {
    const controller = new AbortController();
    this.sse = controller;
    try {
      const token = await this.session.token();
      const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'text/event-stream' };
      let url = `${API}/events`;
      if (this.lastEventId) headers['last-event-id'] = this.lastEventId;
      else url += `?resume=${encodeURIComponent(JSON.stringify(this.resume()))}`;
      const response = await fetch(url, { headers, signal: controller.signal });
      // A cursor the server no longer knows: start over from the last seq of each conversation.
      if (response.status === 400) this.lastEventId = null;
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.event(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      /* dropped: retried below */
    }
    if (this.sse !== controller) return;
    this.sse = null;
    this.setStatus(navigator.onLine ? 'connecting' : 'offline');
    this.retry();
  }

  private event(block: string): void {
    let data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith('id:')) this.lastEventId = line.slice(3).trim();
      else if (line.startsWith('data:')) data += line.slice(5).trimStart();
    }
    if (!data) return;
    const frame = JSON.parse(data) as Frame;
    if (frame.type === 'ready') {
      this.attempt = 0;
      this.setStatus('online');
    }
    this.dispatch(frame);
  }
}
