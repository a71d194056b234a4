// The app shell: sign-in and registration, navigation, the connection indicator, and the
// routes (#/chat, #/chat/<id>, #/videos, #/videos/<id>).

import './style.css';
import { ApiError, Session } from './api';
import { ChatView } from './chat';
import { fill, h } from './dom';
import { Realtime, type Status, type Transport } from './realtime';
import { Directory } from './users';
import { VideosView } from './videos';

const app = document.getElementById('app')!;
const session = new Session();

interface Signed {
  chat: ChatView;
  videos: VideosView;
  realtime: Realtime;
  shell: HTMLElement;
  main: HTMLElement;
}

let signed: Signed | null = null;
let notice = '';

session.onEnded = (reason) => {
  notice = reason;
  signOutLocally();
};

function signOutLocally(): void {
  signed?.realtime.stop();
  signed?.chat.stop();
  signed = null;
  location.hash = '#/login';
  route();
}

// ----- signed out -----

function authScreen(mode: 'login' | 'register'): HTMLElement {
  const registering = mode === 'register';
  const username = h('input', {
    id: 'username',
    name: 'username',
    autocomplete: 'username',
    required: true,
    minlength: 3,
    maxlength: 32,
    pattern: '[a-z0-9_.\\-]{3,32}',
    autocapitalize: 'none',
    spellcheck: false,
  });
  const displayName = h('input', { id: 'display-name', name: 'display_name', autocomplete: 'name', maxlength: 64 });
  const password = h('input', {
    id: 'password',
    name: 'password',
    type: 'password',
    autocomplete: registering ? 'new-password' : 'current-password',
    required: true,
    minlength: 8,
    maxlength: 256,
  });
  const error = h('p', { class: 'error', role: 'alert', id: 'auth-error' }, notice);
  notice = '';
  const submit = h('button', { type: 'submit', class: 'primary wide' }, registering ? 'Create account' : 'Sign in');
  const form = h(
    'form',
    {
      class: 'card auth',
      'aria-labelledby': 'auth-title',
      novalidate: true,
      onsubmit: async (event: Event) => {
        event.preventDefault();
        error.textContent = '';
        submit.disabled = true;
        try {
          if (registering) {
            await session.register(username.value.trim(), password.value, displayName.value.trim());
          }
          await session.signIn(username.value.trim(), password.value);
          location.hash = '#/chat';
          route();
        } catch (e) {
          error.textContent = e instanceof ApiError ? e.message : 'Something went wrong. Try again.';
          (e instanceof ApiError && e.status === 401 ? password : username).focus();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h('h1', { id: 'auth-title' }, registering ? 'Create your account' : 'Sign in to Tertulia'),
    h('label', { for: 'username' }, 'Username'),
    username,
    registering ? h('p', { class: 'hint', id: 'username-hint' }, '3 to 32 characters: a–z, 0–9, “_”, “.” or “-”.') : null,
    registering ? [h('label', { for: 'display-name' }, 'Display name (optional)'), displayName] : null,
    h('label', { for: 'password' }, 'Password'),
    password,
    registering ? h('p', { class: 'hint' }, 'At least 8 characters.') : null,
    error,
    submit,
    h(
      'p',
      {},
      registering ? 'Already have an account? ' : 'New here? ',
      h('a', { href: registering ? '#/login' : '#/register' }, registering ? 'Sign in' : 'Create an account'),
    ),
  );
  if (registering) username.setAttribute('aria-describedby', 'username-hint');
  return h('main', { id: 'main', class: 'auth-page' }, form);
}

// ----- signed in -----

function statusText(status: Status, transport: Transport): string {
  if (status === 'online') return transport === 'sse' ? 'Connected (event stream)' : 'Connected';
  if (status === 'offline') return 'Offline: reconnecting when the network is back';
  return 'Connecting…';
}

function signIn(): Signed {
  const users = new Directory(session);
  const connection = h('span', { id: 'connection', class: 'connection connecting', role: 'status' }, 'Connecting…');
  let videos: VideosView;
  const chat = new ChatView(session, users, null, () => videos.mine());
  videos = new VideosView(
    session,
    () => chat.choices(),
    (conversationId, videoId) => chat.shareInto(conversationId, videoId),
  );
  const realtime = new Realtime(
    session,
    () => chat.resume(),
    (frame) => {
      if (frame.type === 'video') videos.handle(frame.video);
      else chat.handle(frame);
    },
    (status, transport) => {
      connection.className = `connection ${status}`;
      connection.dataset.transport = transport;
      connection.textContent = statusText(status, transport);
    },
  );
  chat.attach(realtime);
  const me = h('span', { class: 'me' });
  session.get<{ display_name: string; username: string }>('/me').then(
    (user) => {
      me.textContent = user.display_name;
      me.title = `@${user.username}`;
    },
    () => {},
  );
  const main = h('main', { id: 'main', tabindex: '-1' });
  const shell = h(
    'div',
    { class: 'shell' },
    h(
      'header',
      { class: 'topbar' },
      h('span', { class: 'brand' }, 'Tertulia'),
      h(
        'nav',
        { 'aria-label': 'Main' },
        h('a', { href: '#/chat', id: 'nav-chat' }, 'Chat'),
        h('a', { href: '#/videos', id: 'nav-videos' }, 'Videos'),
      ),
      connection,
      me,
      h(
        'button',
        {
          type: 'button',
          class: 'secondary signout',
          onclick: async () => {
            signed?.realtime.stop();
            await session.signOut();
            notice = 'You are signed out.';
            signOutLocally();
          },
        },
        'Sign out',
      ),
    ),
    main,
  );
  // Connect once the list is known, so the first hello resumes every conversation.
  chat.load().then(
    () => realtime.start(),
    () => realtime.start(),
  );
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && signed?.chat === chat) chat.onVisible();
  });
  return { chat, videos, realtime, shell, main };
}

function route(): void {
  const [, area = '', id] = location.hash.split('/');
  if (!session.userId) {
    fill(app, authScreen(area === 'register' ? 'register' : 'login'));
    document.getElementById('username')?.focus();
    return;
  }
  signed ??= signIn();
  if (!app.contains(signed.shell)) fill(app, signed.shell);
  const s = signed;
  for (const link of s.shell.querySelectorAll('nav a')) {
    const here = link.getAttribute('href') === `#/${area === 'videos' ? 'videos' : 'chat'}`;
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (area === 'videos') {
    if (!s.main.contains(s.videos.root)) fill(s.main, s.videos.root);
    if (id) void s.videos.open(id);
    else s.videos.showLibrary();
    document.title = 'Videos · Tertulia';
  } else {
    if (!s.main.contains(s.chat.root)) fill(s.main, s.chat.root);
    if (id) void s.chat.open(id).catch((e: Error) => console.error(e));
    else s.chat.close();
    document.title = 'Chat · Tertulia';
  }
}

window.addEventListener('hashchange', route);
route();
