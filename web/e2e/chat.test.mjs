// Chat in a real browser: two people in two browser contexts.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, apiUser, fitsWidth, launch, open, pageUser, register, shot, unique } from './support.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** The messages on screen, by seq: their texts in order. */
async function texts(page) {
  return page.locator('.messages li.message:not(.pending) .text').allTextContents();
}

test('two people chat in real time, and one who drops off catches up with nothing missing or doubled', async () => {
  const ana = await open(browser);
  // Bruno is on a phone.
  const bruno = await open(browser, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const anaName = unique('ana');
  const brunoName = unique('bruno');
  await register(ana.page, anaName, 'Ana');
  await shot(ana.page, '01-empty-chat');
  await register(bruno.page, brunoName, 'Bruno');

  // Ana starts a direct conversation with Bruno from the dialog.
  await ana.page.getByRole('button', { name: 'New conversation' }).click();
  await shot(ana.page, '02-new-conversation');
  await ana.page.getByLabel('Find people').fill(brunoName);
  await ana.page.getByLabel(`Bruno (@${brunoName})`).check();
  await ana.page.getByRole('button', { name: 'Start' }).click();
  await ana.page.getByRole('heading', { name: 'Bruno' }).waitFor();
  // Bruno is online: a green dot and the word.
  await ana.page.locator('.thread-status', { hasText: 'online' }).waitFor();

  // Instant local echo, then the delivery confirmation.
  const composer = ana.page.getByRole('textbox', { name: 'Message', exact: true });
  await composer.fill('Hola Bruno!');
  await composer.press('Enter');
  const first = ana.page.locator('.messages li.message', { hasText: 'Hola Bruno!' });
  await first.waitFor();
  await first.locator('.state', { hasText: /^(Sent|Read)$/ }).waitFor();

  // Bruno's list shows the conversation with its unread count and last message.
  const row = bruno.page.locator('a.conversation', { hasText: 'Ana' });
  await row.locator('.badge', { hasText: '1' }).waitFor();
  await row.locator('.conversation-preview', { hasText: 'Hola Bruno!' }).waitFor();
  await shot(bruno.page, '03-phone-conversation-list');
  await row.click();
  await bruno.page.locator('.messages .text', { hasText: 'Hola Bruno!' }).waitFor();
  // Ana sees that Bruno read it.
  await first.locator('.state', { hasText: 'Read' }).waitFor();

  // Typing, then a reply.
  await bruno.page.getByRole('textbox', { name: 'Message', exact: true }).pressSequentially('Qué tal?');
  await ana.page.locator('.typing', { hasText: 'Bruno is typing…' }).waitFor();
  await bruno.page.getByRole('button', { name: 'Send' }).click();
  await ana.page.locator('.messages .text', { hasText: 'Qué tal?' }).waitFor();
  await shot(ana.page, '04-conversation');
  await shot(bruno.page, '05-phone-conversation');
  await fitsWidth(bruno.page);

  // Edit and delete reach the other side live.
  ana.page.once('dialog', (dialog) => dialog.accept());
  await first.getByRole('button', { name: /^Edit message/ }).click();
  await ana.page.getByRole('textbox', { name: 'Edit message' }).fill('Hola Bruno! (editado)');
  await ana.page.getByRole('button', { name: 'Save' }).click();
  await bruno.page.locator('.messages li.message', { hasText: 'Hola Bruno! (editado)' }).locator('.edited').waitFor();
  await ana.page.locator('.messages li.message', { hasText: 'Qué tal?' }).waitFor();
  const gone = ana.page.locator('.messages li.message').filter({ hasText: 'Hola Bruno! (editado)' });
  await gone.getByRole('button', { name: /^Delete message/ }).click();
  await bruno.page.locator('.messages li.message .deleted', { hasText: 'Message deleted' }).waitFor();

  // Bruno's network drops. Ana goes on talking.
  await bruno.context.setOffline(true);
  await bruno.page.locator('#connection.offline').waitFor();
  await shot(bruno.page, '06-phone-offline');
  const missed = ['one', 'two', 'three'].map((w) => `While you were away: ${w}`);
  for (const text of missed) {
    await composer.fill(text);
    await composer.press('Enter');
  }
  await ana.page.locator('.messages li.message:not(.pending)', { hasText: missed[2] }).waitFor();
  // Back online: resumed, every missed message once, in order, after what was there.
  await bruno.context.setOffline(false);
  await bruno.page.locator('#connection.online[data-transport="websocket"]').waitFor();
  await bruno.page.locator('.messages .text', { hasText: missed[2] }).waitFor();
  const seen = await texts(bruno.page);
  assert.deepEqual(seen, ['Qué tal?', ...missed]);
  const seqs = await bruno.page.locator('.messages li.message').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(seqs).size, seqs.length, 'no message twice');

  assert.deepEqual(ana.problems, []);
  assert.deepEqual(bruno.problems, []);
  await ana.context.close();
  await bruno.context.close();
});

test('history loads on scroll; a group shows who read what', async () => {
  const carla = await apiUser('carla', 'Carla');
  const dani = await apiUser('dani', 'Dani');
  const { page, context, problems } = await open(browser);
  const me = unique('eva');
  await register(page, me, 'Eva');
  const eva = await pageUser(page);
  const group = await api(
    'POST',
    '/conversations',
    { kind: 'group', member_ids: [eva, dani.user_id], title: 'Book club' },
    carla.token,
  );
  for (let i = 1; i <= 70; i++) {
    await api('POST', `/conversations/${group.id}/messages`, { client_msg_id: `m${i}`, content: { type: 'text', text: `Message ${i}` } }, carla.token);
  }
  // The group reached Eva's list live (a `conversation` frame or its messages).
  await page.locator('a.conversation', { hasText: 'Book club' }).locator('.badge', { hasText: '70' }).waitFor();
  await page.locator('a.conversation', { hasText: 'Book club' }).click();
  await page.locator('.messages .text', { hasText: 'Message 70' }).waitFor();
  assert.equal(await page.locator('.messages li.message').count(), 50);
  // Scrolling to the top loads the earlier twenty.
  await page.locator('.messages').evaluate((el) => {
    el.scrollTop = 0;
  });
  await page.locator('.messages .text', { hasText: /^Message 1$/ }).waitFor();
  assert.equal(await page.locator('.messages li.message').count(), 70);
  await page.locator('.thread-status', { hasText: '3 members' }).waitFor();

  // Eva writes; one of two others reads it, then the other.
  await page.getByRole('textbox', { name: 'Message', exact: true }).fill('I finished the book');
  await page.getByRole('textbox', { name: 'Message', exact: true }).press('Enter');
  const mine = page.locator('.messages li.message.mine', { hasText: 'I finished the book' });
  await mine.locator('.state', { hasText: 'Sent' }).waitFor();
  await api('POST', `/conversations/${group.id}/read`, { seq: 71 }, dani.token);
  await mine.locator('.state', { hasText: 'Read by 1' }).waitFor();
  await api('POST', `/conversations/${group.id}/read`, { seq: 71 }, carla.token);
  await mine.locator('.state', { hasText: /^Read$/ }).waitFor();
  await shot(page, '07-group-history');
  assert.deepEqual(problems, []);
  await context.close();
});

test('without WebSockets the app falls back to Server-Sent Events and misses nothing', async () => {
  const fede = await apiUser('fede', 'Fede');
  const context = await browser.newContext();
  // A network that cannot hold a WebSocket.
  await context.addInitScript(() => {
    delete window.WebSocket;
  });
  const page = await context.newPage();
  await page.goto(new URL('/', (await import('./support.mjs')).BASE).href);
  await register(page, unique('gala'), 'Gala');
  await page.locator('#connection[data-transport="sse"]', { hasText: 'event stream' }).waitFor();
  const gala = await pageUser(page);
  const direct = await api('POST', '/conversations', { kind: 'direct', member_ids: [gala] }, fede.token);
  await api('POST', `/conversations/${direct.id}/messages`, { client_msg_id: 'a', content: { type: 'text', text: 'over SSE' } }, fede.token);
  await page.locator('a.conversation', { hasText: 'Fede' }).click();
  await page.locator('.messages .text', { hasText: 'over SSE' }).waitFor();
  // Sending goes over REST, with the same local echo and confirmation.
  await page.getByRole('textbox', { name: 'Message', exact: true }).fill('answered over REST');
  await page.getByRole('textbox', { name: 'Message', exact: true }).press('Enter');
  await page.locator('.messages li.message.mine', { hasText: 'answered over REST' }).locator('.state', { hasText: /Sent|Read/ }).waitFor();
  // Live messages keep arriving on the event stream.
  await api('POST', `/conversations/${direct.id}/messages`, { client_msg_id: 'b', content: { type: 'text', text: 'still live' } }, fede.token);
  await page.locator('.messages .text', { hasText: 'still live' }).waitFor();
  assert.deepEqual(await texts(page), ['over SSE', 'answered over REST', 'still live']);
  await context.close();
});

test('sign-in errors read from problem bodies; tokens refresh silently; sign-out ends the session', async () => {
  const hugo = await apiUser('hugo', 'Hugo');
  const { page, context, problems } = await open(browser);
  // A wrong password: the API's own words, in an alert.
  await page.getByLabel('Username').fill(hugo.username);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: /credentials|password/i }).waitFor();
  await shot(page, '08-sign-in-error');
  // A taken username when registering.
  await page.getByRole('link', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(hugo.username);
  await page.getByLabel('Password').fill('another long password');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('alert').filter({ hasText: /already|taken|exists/i }).waitFor();
  // A username the API refuses: its reason, not a generic failure.
  await page.getByLabel('Username').fill('No Spaces Allowed');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('alert').filter({ hasText: /username/i }).waitFor();

  // Signed in, keyboard only: Tab reaches the controls, Enter submits. The sign-in form
  // replaces the registration form first (filling the old one would be lost with it).
  await page.getByRole('link', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Sign in to Tertulia' }).waitFor();
  await page.getByLabel('Username').fill(hugo.username);
  await page.keyboard.press('Tab');
  await page.keyboard.type('correct horse battery');
  await page.keyboard.press('Enter');
  await page.locator('#connection.online').waitFor();

  // The access token is about to expire: the next call refreshes it first, silently.
  const before = await page.evaluate(() => JSON.parse(localStorage.getItem('tertulia.session')));
  await page.evaluate(() => {
    const s = JSON.parse(localStorage.getItem('tertulia.session'));
    s.expires_at = Date.now();
    localStorage.setItem('tertulia.session', JSON.stringify(s));
  });
  await page.reload();
  await page.locator('#connection.online').waitFor();
  await page.getByRole('heading', { name: 'Conversations' }).waitFor();
  const afterRefresh = await page.evaluate(() => JSON.parse(localStorage.getItem('tertulia.session')));
  assert.notEqual(afterRefresh.refresh_token, before.refresh_token, 'the pair was renewed');
  assert.ok(afterRefresh.expires_at > Date.now() + 60_000);

  // Every control has an accessible name.
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll('button, input, select, textarea, a[href]')]
      .filter((el) => {
        const labelled = el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
        return !labelled && !el.textContent.trim();
      })
      .map((el) => el.outerHTML),
  );
  assert.deepEqual(unnamed, []);

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Tertulia' }).waitFor();
  assert.equal(await page.evaluate(() => localStorage.getItem('tertulia.session')), null);
  // The refresh token is spent for good.
  await assert.rejects(api('POST', '/auth/refresh', { refresh_token: afterRefresh.refresh_token }), /401/);
  assert.deepEqual(problems, []);
  await context.close();
});
