// Video in a real browser: upload with tus-js-client (paused and resumed), processing state
// arriving live, playback with hls.js and quality switching, the library, and sharing into chat.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PASSWORD, api, apiUser, fitsWidth, launch, open, pageUser, register, shot, unique } from './support.mjs';

const VIDEO = process.env.TERTULIA_E2E_VIDEO;

let browser;
before(async () => {
  assert.ok(VIDEO, 'TERTULIA_E2E_VIDEO names a video file to upload');
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** Waits until `video` has played past `seconds`. */
async function playsPast(video, seconds) {
  await video.evaluate(async (el, s) => {
    el.muted = true;
    await el.play();
  }, seconds);
  await video.page().waitForFunction(([el, s]) => el.currentTime > s && el.readyState >= 2, [await video.elementHandle(), seconds]);
}

test('upload with pause and resume, live processing state, HLS playback with quality switching, and sharing into chat', async () => {
  const friend = await apiUser('iris', 'Iris');
  const { page, context, problems } = await open(browser);
  await register(page, unique('jon'), 'Jon');
  const jon = await pageUser(page);
  const direct = await api('POST', '/conversations', { kind: 'direct', member_ids: [jon] }, friend.token);

  await page.getByRole('link', { name: 'Videos' }).click();
  await page.getByRole('heading', { name: 'Upload a video' }).waitFor();
  // A slow uplink, so the upload can be paused half-way.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: 512 * 1024,
  });
  await page.getByLabel('Video file').setInputFiles(VIDEO);
  const title = unique('Fjords ');
  await page.getByLabel('Title', { exact: true }).fill(title);
  await page.getByLabel('Tags (comma-separated)').fill('e2e, norway');
  await page.getByLabel('Who can watch').selectOption('public');
  await page.getByRole('button', { name: 'Upload', exact: true }).click();

  const upload = page.locator('li.upload', { hasText: title });
  const bar = upload.getByRole('progressbar');
  await page.waitForFunction((el) => el.value > 0 && el.value < 100, await bar.elementHandle());
  await shot(page, '10-uploading');
  await upload.getByRole('button', { name: 'Pause' }).click();
  await upload.locator('.upload-state', { hasText: 'Paused at' }).waitFor();
  const paused = Number(await bar.getAttribute('value'));
  assert.ok(paused > 0 && paused < 100, `paused part-way (${paused}%)`);
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  await upload.getByRole('button', { name: 'Resume' }).click();
  // The state comes live from the `video` frames: processing, then ready.
  await upload.locator('.upload-state', { hasText: /Processing|Ready/ }).waitFor();
  await upload.locator('.upload-state', { hasText: 'Ready to watch' }).waitFor({ timeout: 120_000 });
  await shot(page, '11-upload-ready');

  // Playback through hls.js, then a switch to each rendition.
  await upload.getByRole('link', { name: 'Watch' }).click();
  const video = page.locator('#player');
  await video.waitFor();
  const quality = page.getByLabel('Quality');
  await page.waitForFunction((el) => !el.disabled && el.options.length > 1, await quality.elementHandle());
  await playsPast(video, 0.5);
  const levels = await quality.locator('option').evaluateAll((os) => os.map((o) => ({ value: o.value, label: o.textContent })));
  assert.equal(levels[0].label, 'Auto');
  for (const level of levels.slice(1)) {
    await quality.selectOption(level.value);
    await page.waitForFunction(
      ([el, want]) => el.dataset.level === want,
      [await video.elementHandle(), level.value],
    );
  }
  await shot(page, '12-player');

  // Sharing it into the conversation with Iris: a playable card there.
  await page.getByLabel('Share in conversation').selectOption({ label: 'Iris' });
  await page.getByRole('button', { name: 'Share', exact: true }).click();
  await page.getByRole('heading', { name: 'Iris' }).waitFor();
  const card = page.locator('.messages .video-card', { hasText: title });
  await card.getByRole('button', { name: `Play ${title}` }).click();
  await playsPast(card.locator('video'), 0.3);
  await shot(page, '13-video-card-in-chat');

  // Iris, a v2 client, gets the message with the video as content...
  const { messages } = await api('GET', `/conversations/${direct.id}/messages`, undefined, friend.token);
  assert.deepEqual(messages.at(-1).content, { type: 'video', video_id: await card.getAttribute('data-video') });
  // ...and her browser shows it as a card that plays.
  const iris = await open(browser);
  await iris.page.getByLabel('Username').fill(friend.username);
  await iris.page.getByLabel('Password').fill(PASSWORD);
  await iris.page.getByRole('button', { name: 'Sign in' }).click();
  await iris.page.locator('a.conversation', { hasText: 'Jon' }).click();
  const hers = iris.page.locator('.messages .video-card', { hasText: title });
  await hers.getByRole('button', { name: `Play ${title}` }).click();
  await playsPast(hers.locator('video'), 0.3);
  assert.deepEqual(problems, []);
  assert.deepEqual(iris.problems, []);
  await iris.context.close();
  await context.close();
});

test('the library searches, filters and pages', async () => {
  const { page, context, problems } = await open(browser, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await register(page, unique('kim'), 'Kim');
  const token = await page.evaluate(() => JSON.parse(localStorage.getItem('tertulia.session')).access_token);
  const word = unique('lighthouse');
  for (let i = 1; i <= 14; i++) {
    await api('POST', '/videos', { title: `${word} number ${i}`, tags: i % 2 ? ['odd'] : ['even'] }, token);
  }
  await page.getByRole('link', { name: 'Videos' }).click();

  // Full text over the titles.
  await page.getByLabel('Search', { exact: true }).fill(word);
  await page.getByLabel('Only my videos').check();
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  const items = page.locator('.library .video-item');
  await items.first().waitFor();
  assert.equal(await items.count(), 12);
  await shot(page, '14-phone-library');
  await fitsWidth(page);
  // The next page.
  await page.getByRole('button', { name: 'Load more' }).click();
  await page.waitForFunction(() => document.querySelectorAll('.library .video-item').length === 14);
  assert.ok(await page.getByRole('button', { name: 'Load more' }).isHidden());
  // A tag filter.
  await page.getByLabel('Tags', { exact: true }).fill('even');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.waitForFunction(() => document.querySelectorAll('.library .video-item').length === 7);
  // Each is waiting for its file.
  assert.equal(await items.locator('.status[data-status="awaiting_upload"]').count(), 7);
  // Nothing matches: said so.
  await page.getByLabel('Tags', { exact: true }).fill('nothing-has-this-tag');
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.locator('.library .empty', { hasText: 'No videos found.' }).waitFor();
  // What the API refuses reads as its problem detail (at most 20 tags).
  await page.getByLabel('Video file').setInputFiles(VIDEO);
  const tags = Array.from({ length: 21 }, (_, i) => `t${i}`).join(', ');
  await page.getByLabel('Tags (comma-separated)').fill(tags);
  await page.getByRole('button', { name: 'Upload', exact: true }).click();
  await page.locator('.upload-form [role="alert"]', { hasText: /20 tags/ }).waitFor();
  await shot(page, '15-phone-upload-error');
  assert.deepEqual(problems, []);
  await context.close();
});
