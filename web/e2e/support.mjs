// What the browser tests share: Debian's Chromium through playwright-core, the app's URL,
// screenshots, and the public API for setting the scene.
//
// Environment: TERTULIA_WEB_URL (the app, served by svc-bff), CHROMIUM_BIN (default
// /usr/bin/chromium), TERTULIA_E2E_ARTIFACTS (screenshots; default web/e2e-artifacts),
// TERTULIA_E2E_VIDEO (a short video file to upload).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const BASE = process.env.TERTULIA_WEB_URL ?? 'http://127.0.0.1:8080/';
export const ARTIFACTS = process.env.TERTULIA_E2E_ARTIFACTS ?? new URL('../e2e-artifacts/', import.meta.url).pathname;
export const API = new URL('api/v2', BASE).href;
mkdirSync(ARTIFACTS, { recursive: true });

/** Chromium as the machine runs it headless: no sandbox (root), no background traffic. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
}

/** A browser context and page; failures in the page fail the test. */
export async function open(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, ...options });
  context.setDefaultTimeout(30_000);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(String(error)));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) problems.push(msg.text());
  });
  await page.goto(BASE);
  return { context, page, problems };
}

/** Fails when the page scrolls sideways (content wider than a phone's screen). */
export async function fitsWidth(page) {
  const [content, viewport] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  if (content > viewport) throw new Error(`the page is ${content}px wide in a ${viewport}px viewport`);
}

export async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: false });
}

export function unique(prefix) {
  return `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

export const PASSWORD = 'correct horse battery';

/** Registers through the page's form and lands signed in on the chat. */
export async function register(page, username, displayName) {
  await page.getByRole('link', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Display name (optional)').fill(displayName);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('heading', { name: 'Conversations' }).waitFor();
  await page.locator('#connection.online').waitFor();
}

/** Calls the API as a user (to set the scene quickly). */
export async function api(method, path, body, token) {
  const response = await fetch(API + path, {
    method,
    headers: {
      ...(body ? { 'content-type': 'application/json' } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** A user made through the API: {user_id, username, token}. */
export async function apiUser(prefix, displayName) {
  const username = unique(prefix);
  await api('POST', '/auth/register', { username, password: PASSWORD, display_name: displayName });
  const tokens = await api('POST', '/auth/login', { username, password: PASSWORD });
  return { user_id: tokens.user_id, username, token: tokens.access_token, refresh: tokens.refresh_token };
}

/** The signed-in page's user id. */
export function pageUser(page) {
  return page.evaluate(() => JSON.parse(localStorage.getItem('tertulia.session')).user_id);
}
