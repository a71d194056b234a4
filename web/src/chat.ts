// Chat: the conversation list and one open conversation, kept up to date by real-time frames.

import { ApiError, type Session } from './api';
import { ago, fill, h, shortTime, uuid } from './dom';
import type { Realtime } from './realtime';
import type { Content, Conversation, Frame, Message, Presence, User, Video } from './types';
import { Directory } from './users';
import { videoCard } from './videos';

const PAGE = 50;
/** How long a "typing" notice stays without a new one. */
const TYPING_MS = 5000;
/** At most one typing frame per conversation this often. */
const TYPING_EVERY_MS = 3000;

interface Local {
  clientMsgId: string;
  content: Content;
  failed?: string;
}

function lastSeen(p: Presence | undefined): string {
  return p?.last_seen ? `offline, last seen ${ago(p.last_seen)}` : 'offline';
}

/** The open conversation's loaded messages. */
class Thread {
  messages: Message[] = [];
  local = new Map<string, Local>();
  /** Rendered messages by id, with what they were rendered from: kept across renders so a
   * playing video card or an open edit form survives new traffic. */
  rendered = new Map<string, { signature: string; el: HTMLElement }>();
  loadingEarlier = false;
  constructor(readonly id: string) {}

  first(): number {
    return this.messages[0]?.seq ?? 0;
  }

  last(): number {
    return this.messages.at(-1)?.seq ?? 0;
  }

  /** An older page of history (ascending), before what is loaded. */
  prepend(page: Message[]): void {
    const first = this.first();
    this.messages = [...page.filter((m) => first === 0 || m.seq < first), ...this.messages];
  }

  /** Adds or replaces by seq, keeping the order. A change to a message older than the loaded
   * history is left for when that page loads, so the loaded run has no holes. */
  put(message: Message): 'added' | 'updated' | 'gap' | 'ignored' {
    if (this.messages.length > 0 && message.seq < this.first()) return 'ignored';
    const last = this.last();
    if (message.seq > last) {
      if (last > 0 && message.seq > last + 1) return 'gap';
      this.messages.push(message);
      return 'added';
    }
    const at = this.messages.findIndex((m) => m.seq >= message.seq);
    if (at >= 0 && this.messages[at].seq === message.seq) this.messages[at] = message;
    else this.messages.splice(at < 0 ? 0 : at, 0, message);
    return 'updated';
  }
}

export class ChatView {
  readonly root = h('section', { class: 'chat', 'aria-label': 'Chat' });
  private readonly list = h('ul', { class: 'conversations', 'aria-label': 'Conversations' });
  private readonly pane = h('section', { class: 'thread', 'aria-label': 'Conversation' });
  private conversations = new Map<string, Conversation>();
  /** The last seq received of each conversation: what a reconnection resumes from. */
  private seen = new Map<string, number>();
  private receipts = new Map<string, Map<string, number>>();
  private presence = new Map<string, Presence>();
  private typing = new Map<string, Map<string, number>>();
  private thread: Thread | null = null;
  private threadEls: {
    log: HTMLElement;
    typing: HTMLElement;
    header: HTMLElement;
    earlier: HTMLButtonElement;
    error: HTMLElement;
  } | null = null;
  private lastTypingSent = 0;
  private presenceTimer = 0;
  private loaded: Promise<void> | null = null;

  constructor(
    private readonly session: Session,
    private readonly users: Directory,
    private realtime: Realtime | null,
    private readonly myVideos: () => Promise<Video[]>,
  ) {
    const newButton = h(
      'button',
      { type: 'button', class: 'primary', 'aria-label': 'New conversation', onclick: () => this.newConversation() },
      '+ New',
    );
    this.root.append(
      h('aside', { class: 'sidebar' }, h('div', { class: 'sidebar-head' }, h('h2', {}, 'Conversations'), newButton), this.list),
      this.pane,
    );
    fill(this.pane, h('p', { class: 'empty' }, 'Pick a conversation, or start a new one.'));
    this.presenceTimer = window.setInterval(() => this.renderPresence(), 30_000);
  }

  /** Ends this view's timers (the session ended). */
  stop(): void {
    window.clearInterval(this.presenceTimer);
  }

  attach(realtime: Realtime): void {
    this.realtime = realtime;
  }

  /** Resume positions for the real-time connection. */
  resume(): Record<string, number> {
    return Object.fromEntries(this.seen);
  }

  /** Loads the conversation list (once; again after `refresh`). */
  load(): Promise<void> {
    this.loaded ??= this.fetchList().catch((error: unknown) => {
      // Not cached: the next call tries again.
      this.loaded = null;
      throw error;
    });
    return this.loaded;
  }

  private async fetchList(): Promise<void> {
    const page = await this.session.get<{ conversations: Conversation[] }>('/conversations?limit=200');
    for (const c of page.conversations) {
      this.conversations.set(c.id, c);
      this.seen.set(c.id, Math.max(this.seen.get(c.id) ?? 0, c.last_seq));
    }
    const members = page.conversations.flatMap((c) => c.member_ids);
    await this.users.want(members);
    await this.fetchPresence(members);
    this.renderList();
  }

  /** Presence of `members` (the caller left out); frames keep it current afterwards. */
  private async fetchPresence(members: string[]): Promise<void> {
    const ids = [...new Set(members)].filter((id) => id !== this.session.userId);
    for (let i = 0; i < ids.length; i += 200) {
      const chunk = ids.slice(i, i + 200);
      const answer = await this.session.get<{ presence: Presence[] }>(`/presence?user_ids=${chunk.join(',')}`);
      for (const p of answer.presence) this.presence.set(p.user_id, p);
    }
  }

  // ----- the list -----

  private title(c: Conversation): string {
    if (c.title) return c.title;
    const others = c.member_ids.filter((id) => id !== this.session.userId);
    if (others.length === 0) return 'Just you';
    return others.map((id) => this.users.name(id)).join(', ');
  }

  private peer(c: Conversation): string | null {
    if (c.kind !== 'direct') return null;
    return c.member_ids.find((id) => id !== this.session.userId) ?? null;
  }

  private preview(m: Message | undefined): string {
    if (!m) return 'No messages yet';
    if (m.deleted) return 'Message deleted';
    const who = m.sender_id === this.session.userId ? 'You: ' : '';
    return who + (m.content.type === 'text' ? m.content.text : 'Shared a video');
  }

  private renderList(): void {
    const sorted = [...this.conversations.values()].sort((a, b) =>
      (b.last_message?.sent_at ?? b.created_at).localeCompare(a.last_message?.sent_at ?? a.created_at),
    );
    if (sorted.length === 0) {
      fill(this.list, h('li', { class: 'empty' }, 'No conversations yet.'));
      return;
    }
    fill(
      this.list,
      sorted.map((c) => {
        const peer = this.peer(c);
        const unread = this.thread?.id === c.id ? 0 : c.unread;
        const current = this.thread?.id === c.id;
        return h(
          'li',
          {},
          h(
            'a',
            {
              href: `#/chat/${c.id}`,
              class: `conversation${current ? ' current' : ''}${unread ? ' has-unread' : ''}`,
              'aria-current': current ? 'page' : undefined,
              'data-conversation': c.id,
            },
            peer ? this.dot(peer) : h('span', { class: 'group-icon', 'aria-hidden': 'true' }, '#'),
            h(
              'span',
              { class: 'conversation-text' },
              h('span', { class: 'conversation-title' }, this.title(c)),
              h('span', { class: 'conversation-preview' }, this.preview(c.last_message)),
            ),
            unread
              ? h('span', { class: 'badge', 'aria-label': `${unread} unread` }, unread > 99 ? '99+' : String(unread))
              : null,
          ),
        );
      }),
    );
  }

  private dot(userId: string): HTMLElement {
    const p = this.presence.get(userId);
    const online = p?.status === 'online';
    const label = online ? 'online' : lastSeen(p);
    return h('span', { class: `dot ${online ? 'online' : 'offline'}`, role: 'img', 'aria-label': label, title: label });
  }

  // ----- one conversation -----

  /** Opens a conversation: its newest page of history, then live traffic. */
  async open(id: string): Promise<void> {
    await this.load();
    let conversation = this.conversations.get(id);
    if (!conversation) {
      try {
        conversation = await this.session.get<Conversation>(`/conversations/${id}`);
      } catch (error) {
        fill(this.pane, h('p', { class: 'error', role: 'alert' }, (error as Error).message));
        return;
      }
      this.conversations.set(id, conversation);
      await this.users.want(conversation.member_ids);
    }
    if (this.thread?.id === id) return;
    // Peers met since the list loaded (a new conversation) have no presence yet.
    await this.fetchPresence(conversation.member_ids.filter((m) => !this.presence.has(m))).catch(() => {});
    const thread = new Thread(id);
    this.thread = thread;
    this.root.classList.add('has-thread');
    this.renderThreadShell(conversation);
    const page = await this.session.get<{ messages: Message[] }>(`/conversations/${id}/messages?limit=${PAGE}`);
    if (this.thread !== thread) return;
    for (const m of page.messages) thread.put(m);
    await this.users.want(page.messages.map((m) => m.sender_id));
    this.noteSeen(id, thread.last());
    this.renderMessages(true);
    this.markRead();
    this.renderList();
  }

  close(): void {
    this.thread = null;
    this.threadEls = null;
    this.root.classList.remove('has-thread');
    fill(this.pane, h('p', { class: 'empty' }, 'Pick a conversation, or start a new one.'));
    this.renderList();
  }

  private renderThreadShell(c: Conversation): void {
    const header = h('div', { class: 'thread-status' });
    const log = h('ol', { class: 'messages', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages', tabindex: '0' });
    const earlier = h(
      'button',
      { type: 'button', class: 'link', onclick: () => void this.loadEarlier() },
      'Load earlier messages',
    );
    const typing = h('p', { class: 'typing', 'aria-live': 'polite' });
    const error = h('p', { class: 'error', role: 'alert' });
    const text = h('textarea', {
      id: 'composer',
      name: 'text',
      rows: 1,
      maxlength: 4000,
      placeholder: 'Write a message',
      'aria-label': 'Message',
      required: true,
    });
    text.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    text.addEventListener('input', () => this.sendTyping());
    const form = h(
      'form',
      {
        class: 'composer',
        onsubmit: (event: Event) => {
          event.preventDefault();
          const value = text.value.trim();
          if (!value) return;
          text.value = '';
          void this.send({ type: 'text', text: value });
        },
      },
      text,
      h('button', { type: 'button', class: 'secondary', onclick: () => void this.shareVideo(), 'aria-label': 'Share a video' }, 'Video'),
      h('button', { type: 'submit', class: 'primary' }, 'Send'),
    );
    log.addEventListener('scroll', () => {
      if (log.scrollTop < 40) void this.loadEarlier();
    });
    fill(
      this.pane,
      h(
        'header',
        { class: 'thread-head' },
        h('a', { href: '#/chat', class: 'back', 'aria-label': 'Back to conversations' }, '←'),
        h('div', {}, h('h2', { id: 'thread-title' }, this.title(c)), header),
      ),
      log,
      typing,
      error,
      form,
    );
    this.threadEls = { log, typing, header, earlier, error };
    this.renderPresence();
    text.focus();
  }

  private renderPresence(): void {
    const c = this.thread && this.conversations.get(this.thread.id);
    if (!c || !this.threadEls) {
      if (!this.thread) this.renderList();
      return;
    }
    const peer = this.peer(c);
    if (peer) {
      const p = this.presence.get(peer);
      fill(
        this.threadEls.header,
        this.dot(peer),
        p?.status === 'online' ? ' online' : ` ${lastSeen(p)}`,
      );
    } else {
      const online = c.member_ids.filter((id) => this.presence.get(id)?.status === 'online').length;
      fill(this.threadEls.header, `${c.member_ids.length} members, ${online} online`);
    }
  }

  private messageEl(m: Message): HTMLElement {
    const mine = m.sender_id === this.session.userId;
    const body = m.deleted
      ? h('p', { class: 'deleted' }, 'Message deleted')
      : m.content.type === 'text'
        ? h('p', { class: 'text' }, m.content.text)
        : videoCard(this.session, m.content.video_id);
    const actions =
      mine && !m.deleted
        ? h(
            'span',
            { class: 'actions' },
            m.content.type === 'text'
              ? h('button', { type: 'button', class: 'link', onclick: () => this.edit(m), 'aria-label': `Edit message ${m.seq}` }, 'Edit')
              : null,
            h('button', { type: 'button', class: 'link', onclick: () => void this.remove(m), 'aria-label': `Delete message ${m.seq}` }, 'Delete'),
          )
        : null;
    return h(
      'li',
      { class: `message${mine ? ' mine' : ''}`, 'data-seq': m.seq, 'data-client-msg-id': m.client_msg_id },
      h(
        'div',
        { class: 'meta' },
        h('span', { class: 'sender' }, mine ? 'You' : this.users.name(m.sender_id)),
        h('time', { datetime: m.sent_at }, shortTime(m.sent_at)),
        m.edited_at && !m.deleted ? h('span', { class: 'edited' }, '(edited)') : null,
      ),
      body,
      h('div', { class: 'foot' }, mine ? h('span', { class: 'state' }, this.stateOf(m)) : null, actions),
    );
  }

  /** The element of `m`, rebuilt only when the message itself changed; its delivery state is
   * updated in place. */
  private renderedEl(thread: Thread, m: Message): HTMLElement {
    const signature = `${m.edited_at ?? ''}|${m.deleted}|${m.content.type === 'text' ? m.content.text : m.content.video_id}`;
    let entry = thread.rendered.get(m.id);
    if (!entry || entry.signature !== signature) {
      entry = { signature, el: this.messageEl(m) };
      thread.rendered.set(m.id, entry);
    }
    const state = entry.el.querySelector('.state');
    if (state) state.textContent = this.stateOf(m);
    return entry.el;
  }

  /** Drops an element kept for `m` (an edit form that was cancelled). */
  private rerender(m: Message): void {
    this.thread?.rendered.delete(m.id);
    this.renderMessages(false);
  }

  private localEl(l: Local): HTMLElement {
    return h(
      'li',
      { class: 'message mine pending', 'data-client-msg-id': l.clientMsgId },
      h('div', { class: 'meta' }, h('span', { class: 'sender' }, 'You')),
      l.content.type === 'text' ? h('p', { class: 'text' }, l.content.text) : h('p', { class: 'text' }, 'Video'),
      h(
        'div',
        { class: 'foot' },
        l.failed
          ? [
              h('span', { class: 'state failed', role: 'alert' }, `Not sent: ${l.failed}`),
              h('button', { type: 'button', class: 'link', onclick: () => this.retry(l) }, 'Retry'),
            ]
          : h('span', { class: 'state' }, 'Sending…'),
      ),
    );
  }

  /** "Sent", "Read", "Read by 2" for the caller's own messages. */
  private stateOf(m: Message): string {
    const readers = [...(this.receipts.get(m.conversation_id)?.entries() ?? [])].filter(
      ([user, seq]) => user !== this.session.userId && seq >= m.seq,
    ).length;
    const c = this.conversations.get(m.conversation_id);
    if (readers === 0) return 'Sent';
    if (c?.kind === 'direct' || (c && readers >= c.member_ids.length - 1)) return 'Read';
    return `Read by ${readers}`;
  }

  private renderMessages(toBottom: boolean): void {
    const els = this.threadEls;
    const thread = this.thread;
    if (!els || !thread) return;
    const log = els.log;
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    const fromBottom = log.scrollHeight - log.scrollTop;
    fill(
      log,
      thread.first() > 1 ? h('li', { class: 'earlier' }, els.earlier) : null,
      thread.messages.length === 0 && thread.local.size === 0 ? h('li', { class: 'empty' }, 'No messages yet. Say hello!') : null,
      thread.messages.map((m) => this.renderedEl(thread, m)),
      [...thread.local.values()].map((l) => this.localEl(l)),
    );
    if (toBottom || nearBottom) log.scrollTop = log.scrollHeight;
    else log.scrollTop = log.scrollHeight - fromBottom;
  }

  private async loadEarlier(): Promise<void> {
    const thread = this.thread;
    if (!thread || thread.loadingEarlier || thread.first() <= 1) return;
    thread.loadingEarlier = true;
    try {
      const page = await this.session.get<{ messages: Message[] }>(
        `/conversations/${thread.id}/messages?before_seq=${thread.first()}&limit=${PAGE}`,
      );
      await this.users.want(page.messages.map((m) => m.sender_id));
      thread.prepend(page.messages);
      if (this.thread === thread) this.renderMessages(false);
    } catch (error) {
      this.showError(error);
    } finally {
      thread.loadingEarlier = false;
    }
  }

  // ----- acting -----

  private async send(content: Content): Promise<void> {
    const thread = this.thread;
    if (!thread || !this.realtime) return;
    const local: Local = { clientMsgId: uuid(), content };
    thread.local.set(local.clientMsgId, local);
    this.renderMessages(true);
    this.deliver(thread, local);
  }

  private deliver(thread: Thread, local: Local): void {
    this.realtime!.send(thread.id, local.clientMsgId, local.content).then(
      (message) => this.receive(message),
      (error: Error) => {
        local.failed = error.message;
        if (this.thread === thread) this.renderMessages(false);
      },
    );
  }

  private retry(local: Local): void {
    if (!this.thread) return;
    local.failed = undefined;
    this.renderMessages(false);
    this.deliver(this.thread, local);
  }

  private edit(m: Message): void {
    const el = this.threadEls?.log.querySelector<HTMLElement>(`[data-seq="${m.seq}"]`);
    if (!el || m.content.type !== 'text') return;
    const input = h('textarea', { 'aria-label': 'Edit message', rows: 2, maxlength: 4000 });
    input.value = m.content.text;
    const form = h(
      'form',
      {
        class: 'edit',
        onsubmit: async (event: Event) => {
          event.preventDefault();
          try {
            const updated = await this.session.call<Message>(
              'PATCH',
              `/conversations/${m.conversation_id}/messages/${m.id}`,
              { content: { type: 'text', text: input.value } },
            );
            this.receive(updated);
          } catch (error) {
            this.showError(error);
          }
        },
        onkeydown: (event: KeyboardEvent) => {
          if (event.key === 'Escape') this.rerender(m);
        },
      },
      input,
      h('button', { type: 'submit', class: 'primary' }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => this.rerender(m) }, 'Cancel'),
    );
    el.querySelector('.text')?.replaceWith(form);
    input.focus();
  }

  private async remove(m: Message): Promise<void> {
    if (!window.confirm('Delete this message for everyone?')) return;
    try {
      await this.session.call('DELETE', `/conversations/${m.conversation_id}/messages/${m.id}`);
      this.receive({ ...m, deleted: true, content: { type: 'text', text: '' } });
    } catch (error) {
      this.showError(error);
    }
  }

  private showError(error: unknown): void {
    if (this.threadEls) this.threadEls.error.textContent = (error as Error).message;
  }

  private sendTyping(): void {
    const now = Date.now();
    if (!this.thread || now - this.lastTypingSent < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    this.realtime?.typing(this.thread.id);
  }

  /** Tells the others how far the caller has read, when the page is in view. */
  private markRead(): void {
    const thread = this.thread;
    if (!thread || document.visibilityState !== 'visible') return;
    const c = this.conversations.get(thread.id);
    const last = thread.last();
    if (!c || last === 0) return;
    const mine = this.receipts.get(thread.id)?.get(this.session.userId ?? '') ?? 0;
    if (c.unread > 0 || mine < last) {
      c.unread = 0;
      this.receiptMap(thread.id).set(this.session.userId ?? '', last);
      this.realtime?.read(thread.id, last);
    }
  }

  onVisible(): void {
    this.markRead();
    this.renderList();
  }

  private receiptMap(conversationId: string): Map<string, number> {
    let map = this.receipts.get(conversationId);
    if (!map) {
      map = new Map();
      this.receipts.set(conversationId, map);
    }
    return map;
  }

  private noteSeen(conversationId: string, seq: number): void {
    if (seq > (this.seen.get(conversationId) ?? 0)) this.seen.set(conversationId, seq);
  }

  // ----- frames -----

  /** A stored message (live, resumed, acknowledged, edited or deleted). */
  private receive(m: Message): void {
    const c = this.conversations.get(m.conversation_id);
    const thread = this.thread?.id === m.conversation_id ? this.thread : null;
    const isNew = m.seq > (this.seen.get(m.conversation_id) ?? 0);
    this.noteSeen(m.conversation_id, m.seq);
    if (c) {
      if (m.seq >= c.last_seq) {
        c.last_seq = m.seq;
        c.last_message = m;
      }
      if (isNew && m.sender_id !== this.session.userId && !thread) c.unread += 1;
    }
    if (thread) {
      if (m.sender_id === this.session.userId) thread.local.delete(m.client_msg_id);
      if (thread.put(m) === 'gap') {
        void this.fillGap(thread);
        return;
      }
      void this.users.want([m.sender_id]).then(() => {
        if (this.thread === thread) {
          this.renderMessages(false);
          this.markRead();
        }
      });
    }
    this.renderList();
  }

  /** Reads what lies between the last loaded message and a newer one. */
  private async fillGap(thread: Thread): Promise<void> {
    const page = await this.session.get<{ messages: Message[] }>(
      `/conversations/${thread.id}/messages?after_seq=${thread.last()}&limit=200`,
    );
    for (const m of page.messages) thread.put(m);
    if (this.thread === thread) this.renderMessages(false);
  }

  handle(frame: Frame): void {
    switch (frame.type) {
      case 'message':
      case 'message_updated':
      case 'reactions':
        if (!this.conversations.has(frame.conversation_id)) void this.discover(frame.conversation_id);
        this.receive(frame.message);
        break;
      case 'receipt':
        {
          const map = this.receiptMap(frame.conversation_id);
          map.set(frame.user_id, Math.max(map.get(frame.user_id) ?? 0, frame.seq));
          if (frame.user_id === this.session.userId) {
            const c = this.conversations.get(frame.conversation_id);
            if (c && frame.seq >= c.last_seq) c.unread = 0;
            this.renderList();
          }
          if (this.thread?.id === frame.conversation_id) this.renderMessages(false);
        }
        break;
      case 'typing':
        this.showTyping(frame.conversation_id, frame.user_id);
        break;
      case 'presence':
        this.presence.set(frame.user_id, frame);
        this.renderList();
        this.renderPresence();
        break;
      case 'conversation':
        {
          const known = this.conversations.get(frame.conversation.id);
          this.conversations.set(frame.conversation.id, { ...frame.conversation, unread: known?.unread ?? frame.conversation.unread ?? 0 });
          this.noteSeen(frame.conversation.id, frame.conversation.last_seq);
          void this.users.want(frame.conversation.member_ids).then(() => this.renderList());
        }
        break;
      default:
        break;
    }
  }

  /** A conversation first heard of through a message. */
  private async discover(id: string): Promise<void> {
    const c = await this.session.get<Conversation>(`/conversations/${id}`);
    this.conversations.set(id, c);
    await this.users.want(c.member_ids);
    this.renderList();
  }

  private showTyping(conversationId: string, userId: string): void {
    if (userId === this.session.userId) return;
    let who = this.typing.get(conversationId);
    if (!who) {
      who = new Map();
      this.typing.set(conversationId, who);
    }
    who.set(userId, Date.now() + TYPING_MS);
    this.renderTyping();
    window.setTimeout(() => this.renderTyping(), TYPING_MS + 50);
  }

  private renderTyping(): void {
    if (!this.thread || !this.threadEls) return;
    const now = Date.now();
    const names = [...(this.typing.get(this.thread.id)?.entries() ?? [])]
      .filter(([, until]) => until > now)
      .map(([id]) => this.users.name(id));
    this.threadEls.typing.textContent =
      names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
  }

  // ----- dialogs -----

  private newConversation(): void {
    const chosen = new Map<string, User>();
    const results = h('ul', { class: 'results', 'aria-label': 'People found' });
    const picked = h('p', { class: 'picked', 'aria-live': 'polite' });
    const titleInput = h('input', { id: 'group-title', name: 'title', maxlength: 128, placeholder: 'Optional for groups' });
    const error = h('p', { class: 'error', role: 'alert' });
    const search = h('input', {
      id: 'people-search',
      type: 'search',
      name: 'query',
      autocomplete: 'off',
      placeholder: 'Start typing a username',
    });
    const showPicked = () => {
      picked.textContent =
        chosen.size === 0 ? 'Nobody chosen yet.' : `With: ${[...chosen.values()].map((u) => u.display_name).join(', ')}`;
    };
    const find = async () => {
      const query = search.value.trim().toLowerCase();
      if (!query) {
        fill(results);
        return;
      }
      try {
        const page = await this.session.get<{ users: User[] }>(`/users?query=${encodeURIComponent(query)}&limit=10`);
        this.users.remember(page.users);
        const others = page.users.filter((u) => u.user_id !== this.session.userId);
        fill(
          results,
          others.length === 0
            ? h('li', {}, 'Nobody by that name.')
            : others.map((u) => {
                const box = h('input', {
                  type: 'checkbox',
                  id: `pick-${u.user_id}`,
                  checked: chosen.has(u.user_id),
                  onchange: () => {
                    if (box.checked) chosen.set(u.user_id, u);
                    else chosen.delete(u.user_id);
                    showPicked();
                  },
                });
                return h('li', {}, box, h('label', { for: `pick-${u.user_id}` }, `${u.display_name} (@${u.username})`));
              }),
        );
      } catch (e) {
        error.textContent = (e as Error).message;
      }
    };
    search.addEventListener('input', () => void find());
    const dialog = h(
      'dialog',
      { class: 'dialog', 'aria-labelledby': 'new-title' },
      h(
        'form',
        {
          method: 'dialog',
          onsubmit: async (event: Event) => {
            event.preventDefault();
            if (chosen.size === 0) {
              error.textContent = 'Choose at least one person.';
              return;
            }
            const title = titleInput.value.trim();
            const kind = chosen.size === 1 && !title ? 'direct' : 'group';
            try {
              const c = await this.session.call<Conversation>('POST', '/conversations', {
                kind,
                member_ids: [...chosen.keys()],
                ...(title ? { title } : {}),
              });
              this.conversations.set(c.id, { ...c, unread: c.unread ?? 0 });
              this.noteSeen(c.id, c.last_seq);
              dialog.close();
              location.hash = `#/chat/${c.id}`;
            } catch (e) {
              error.textContent = (e as ApiError).message;
            }
          },
        },
        h('h2', { id: 'new-title' }, 'New conversation'),
        h('label', { for: 'people-search' }, 'Find people'),
        search,
        results,
        picked,
        h('label', { for: 'group-title' }, 'Group name'),
        titleInput,
        error,
        h(
          'div',
          { class: 'row' },
          h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel'),
          h('button', { type: 'submit', class: 'primary' }, 'Start'),
        ),
      ),
    );
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    showPicked();
    dialog.showModal();
    search.focus();
  }

  private async shareVideo(): Promise<void> {
    const error = h('p', { class: 'error', role: 'alert' });
    const list = h('ul', { class: 'results', 'aria-label': 'Your videos' }, h('li', {}, 'Loading your videos…'));
    const dialog = h(
      'dialog',
      { class: 'dialog', 'aria-labelledby': 'share-title' },
      h('h2', { id: 'share-title' }, 'Share a video'),
      list,
      error,
      h('div', { class: 'row' }, h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel')),
    );
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    try {
      const videos = (await this.myVideos()).filter((v) => v.status === 'ready');
      fill(
        list,
        videos.length === 0
          ? h('li', {}, 'No ready videos yet. Upload one under Videos.')
          : videos.map((v) =>
              h(
                'li',
                {},
                h(
                  'button',
                  {
                    type: 'button',
                    class: 'secondary wide',
                    onclick: () => {
                      dialog.close();
                      void this.send({ type: 'video', video_id: v.id });
                    },
                  },
                  `Share “${v.title}”`,
                ),
              ),
            ),
      );
    } catch (e) {
      error.textContent = (e as Error).message;
    }
  }

  /** Shares a video into a conversation (from the video page). */
  async shareInto(conversationId: string, videoId: string): Promise<void> {
    if (!this.realtime) return;
    const message = await this.realtime.send(conversationId, uuid(), { type: 'video', video_id: videoId });
    this.receive(message);
  }

  /** Conversations for pickers, newest first. */
  async choices(): Promise<{ id: string; title: string }[]> {
    await this.load();
    return [...this.conversations.values()].map((c) => ({ id: c.id, title: this.title(c) }));
  }
}
