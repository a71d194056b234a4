// Video: upload (tus, resumable, with pause), the library (search, filters, paging), the
// player (hls.js, quality switching) and the card a shared video shows in chat.

import * as tus from 'tus-js-client';
import { ApiError, type Session } from './api';
import { fill, h, shortTime } from './dom';
import type { Video } from './types';

const PAGE = 12;

const STATUS: Record<Video['status'], string> = {
  awaiting_upload: 'Waiting for upload',
  processing: 'Processing',
  ready: 'Ready',
  failed: 'Failed',
};

function statusBadge(v: Video): HTMLElement {
  return h('span', { class: `status ${v.status}`, 'data-status': v.status }, STATUS[v.status]);
}

function duration(seconds: number | undefined): string {
  if (seconds === undefined) return '';
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** Plays `video`'s HLS ladder in `el` with hls.js (or natively), and offers its qualities in
 * `quality` (a select: "Auto", then each rendition). Resolves to a function that stops it.
 * hls.js is loaded on first use: pages without a player do not download it. */
export async function play(el: HTMLVideoElement, v: Video, quality?: HTMLSelectElement): Promise<() => void> {
  const url = v.playback?.hls_url;
  if (!url) {
    if (v.playback?.mp4_url) el.src = v.playback.mp4_url;
    return () => el.removeAttribute('src');
  }
  const { default: Hls } = await import('hls.js');
  if (Hls.isSupported()) {
    const hls = new Hls({ capLevelToPlayerSize: false });
    hls.loadSource(url);
    hls.attachMedia(el);
    if (quality) {
      hls.on(Hls.Events.MANIFEST_PARSED, () => {
        fill(
          quality,
          h('option', { value: '-1' }, 'Auto'),
          hls.levels.map((level, i) => h('option', { value: String(i) }, `${level.height}p`)),
        );
        quality.disabled = false;
      });
      hls.on(Hls.Events.LEVEL_SWITCHED, (_event, data) => {
        el.dataset.level = String(data.level);
        el.dataset.height = String(hls.levels[data.level]?.height ?? '');
      });
      quality.onchange = () => {
        hls.currentLevel = Number(quality.value);
      };
    }
    return () => hls.destroy();
  }
  el.src = url;
  return () => el.removeAttribute('src');
}

/** A shared video in a chat message: thumbnail, title, and a play button that plays it in place. */
export function videoCard(session: Session, videoId: string): HTMLElement {
  const card = h('div', { class: 'video-card', 'data-video': videoId }, h('p', {}, 'Loading video…'));
  session.get<Video>(`/videos/${videoId}`).then(
    (v) => {
      const player = h('video', { controls: true, playsinline: true, muted: true, preload: 'none', 'aria-label': `Video: ${v.title}` });
      const start = h(
        'button',
        {
          type: 'button',
          class: 'play',
          'aria-label': `Play ${v.title}`,
          onclick: () => {
            start.replaceWith(player);
            void play(player, v).then(() => player.play().catch(() => {}));
          },
        },
        v.thumbnail_url ? h('img', { src: v.thumbnail_url, alt: '' }) : null,
        h('span', { class: 'play-icon', 'aria-hidden': 'true' }, '▶'),
      );
      fill(
        card,
        v.status === 'ready' ? start : statusBadge(v),
        h('p', { class: 'video-title' }, h('a', { href: `#/videos/${v.id}` }, v.title), ' ', h('span', { class: 'muted' }, duration(v.duration_s))),
      );
    },
    (error: ApiError) => {
      fill(card, h('p', { class: 'muted' }, error.status === 404 ? 'This video is not available.' : error.message));
    },
  );
  return card;
}

/** An upload in progress. */
interface Upload {
  video: Video;
  tus: tus.Upload;
  paused: boolean;
  el: HTMLElement;
  bar: HTMLProgressElement;
  label: HTMLElement;
  toggle: HTMLButtonElement;
}

export class VideosView {
  readonly root = h('section', { class: 'videos', 'aria-label': 'Videos' });
  private readonly results = h('ul', { class: 'library', 'aria-label': 'Videos found' });
  private readonly more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Load more');
  private readonly uploads = h('ul', { class: 'uploads', 'aria-label': 'Uploads' });
  private readonly error = h('p', { class: 'error', role: 'alert' });
  private readonly library = h('div', { class: 'library-pane' });
  private readonly detail = h('div', { class: 'detail-pane' });
  private nextPage: string | null = null;
  private query = { text: '', tags: '', mine: false, order: 'newest' };
  private active = new Map<string, Upload>();
  private stopPlayer: (() => void) | null = null;

  constructor(
    private readonly session: Session,
    private readonly conversations: () => Promise<{ id: string; title: string }[]>,
    private readonly share: (conversationId: string, videoId: string) => Promise<void>,
  ) {
    this.more.addEventListener('click', () => void this.search(false));
    this.library.append(this.uploadForm(), this.uploads, this.searchForm(), this.error, this.results, this.more);
    this.root.append(this.library, this.detail);
  }

  /** The caller's own videos (for sharing into chat). */
  async mine(): Promise<Video[]> {
    const page = await this.session.get<{ videos: Video[] }>(`/videos?owner_id=${this.session.userId}&limit=50`);
    return page.videos;
  }

  showLibrary(): void {
    this.stopPlayer?.();
    this.stopPlayer = null;
    this.root.classList.remove('has-detail');
    fill(this.detail);
    if (this.results.childElementCount === 0) void this.search(true);
  }

  private uploadForm(): HTMLElement {
    const file = h('input', { id: 'upload-file', type: 'file', name: 'file', accept: 'video/*', required: true });
    const title = h('input', { id: 'upload-title', name: 'title', required: true, maxlength: 200 });
    const tags = h('input', { id: 'upload-tags', name: 'tags', placeholder: 'travel, norway' });
    const visibility = h(
      'select',
      { id: 'upload-visibility', name: 'visibility' },
      h('option', { value: 'private' }, 'Private: only you'),
      h('option', { value: 'unlisted' }, 'Unlisted: anyone with the link'),
      h('option', { value: 'public' }, 'Public: listed and searchable'),
    );
    file.addEventListener('change', () => {
      const f = file.files?.[0];
      if (f && !title.value) title.value = f.name.replace(/\.[^.]+$/, '');
    });
    const error = h('p', { class: 'error', role: 'alert' });
    const form = h(
      'form',
      {
        class: 'card upload-form',
        'aria-labelledby': 'upload-heading',
        onsubmit: async (event: Event) => {
          event.preventDefault();
          error.textContent = '';
          const f = file.files?.[0];
          if (!f) {
            error.textContent = 'Choose a video file first.';
            return;
          }
          try {
            const video = await this.session.call<Video>('POST', '/videos', {
              title: title.value.trim(),
              tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
              visibility: visibility.value,
            });
            this.startUpload(video, f);
            form.reset();
          } catch (e) {
            error.textContent = (e as Error).message;
          }
        },
      },
      h('h2', { id: 'upload-heading' }, 'Upload a video'),
      h('label', { for: 'upload-file' }, 'Video file'),
      file,
      h('label', { for: 'upload-title' }, 'Title'),
      title,
      h('label', { for: 'upload-tags' }, 'Tags (comma-separated)'),
      tags,
      h('label', { for: 'upload-visibility' }, 'Who can watch'),
      visibility,
      error,
      h('button', { type: 'submit', class: 'primary' }, 'Upload'),
    );
    return form;
  }

  private startUpload(video: Video, file: File): void {
    const bar = h('progress', { max: 100, value: 0, 'aria-label': `Upload of ${video.title}` });
    const label = h('span', { class: 'upload-state', 'aria-live': 'polite' }, 'Starting…');
    const toggle = h('button', { type: 'button', class: 'secondary' }, 'Pause');
    const el = h(
      'li',
      { class: 'upload card', 'data-video': video.id },
      h('strong', {}, video.title),
      bar,
      label,
      toggle,
    );
    this.uploads.prepend(el);
    const upload: Upload = {
      video,
      paused: false,
      el,
      bar,
      label,
      toggle,
      tus: new tus.Upload(file, {
        endpoint: video.upload!.url,
        chunkSize: 256 * 1024,
        retryDelays: [0, 1000, 3000, 5000, 10000],
        metadata: { filename: file.name, filetype: file.type },
        removeFingerprintOnSuccess: true,
        onProgress: (sent, total) => {
          const percent = total ? Math.floor((sent / total) * 100) : 0;
          bar.value = percent;
          label.textContent = `${percent}% uploaded`;
        },
        onSuccess: () => {
          bar.value = 100;
          toggle.remove();
          this.showState(upload.video.id, 'processing');
        },
        onError: (error) => {
          label.textContent = `Upload failed: ${error.message}`;
          label.setAttribute('role', 'alert');
          toggle.textContent = 'Retry';
          upload.paused = true;
        },
      }),
    };
    toggle.addEventListener('click', () => {
      if (upload.paused) {
        upload.paused = false;
        toggle.textContent = 'Pause';
        label.textContent = 'Resuming…';
        upload.tus.start();
      } else {
        upload.paused = true;
        toggle.textContent = 'Resume';
        void upload.tus.abort().then(() => {
          label.textContent = `Paused at ${bar.value}%`;
        });
      }
    });
    this.active.set(video.id, upload);
    upload.tus.start();
  }

  private showState(videoId: string, status: Video['status'], reason?: string): void {
    const upload = this.active.get(videoId);
    if (!upload) return;
    upload.label.textContent =
      status === 'ready'
        ? 'Ready to watch'
        : status === 'failed'
          ? `Processing failed: ${reason ?? 'unknown reason'}`
          : status === 'processing'
            ? 'Processing…'
            : upload.label.textContent;
    upload.el.dataset.status = status;
    if (status === 'ready' && !upload.el.querySelector('a')) {
      upload.el.append(h('a', { href: `#/videos/${videoId}`, class: 'watch' }, 'Watch'));
    }
  }

  /** A `video` frame: one of the caller's videos changed state. */
  handle(v: Video): void {
    this.showState(v.id, v.status, v.failure_reason);
    const card = this.results.querySelector(`[data-video="${v.id}"] .status`);
    if (card) card.replaceWith(statusBadge(v));
    if (this.detail.dataset.video === v.id && v.status === 'ready' && !this.detail.querySelector('video')) {
      void this.open(v.id);
    }
  }

  private searchForm(): HTMLElement {
    const text = h('input', { id: 'search-text', type: 'search', name: 'query', placeholder: 'Title, description or tag' });
    const tags = h('input', { id: 'search-tags', name: 'tags', placeholder: 'travel, norway' });
    const order = h(
      'select',
      { id: 'search-order', name: 'order' },
      h('option', { value: 'newest' }, 'Newest first'),
      h('option', { value: 'relevance' }, 'Best match'),
    );
    const mine = h('input', { id: 'search-mine', type: 'checkbox', name: 'mine' });
    return h(
      'form',
      {
        class: 'card search',
        role: 'search',
        'aria-label': 'Search videos',
        onsubmit: (event: Event) => {
          event.preventDefault();
          this.query = { text: text.value.trim(), tags: tags.value.trim(), mine: mine.checked, order: order.value };
          void this.search(true);
        },
      },
      h('label', { for: 'search-text' }, 'Search'),
      text,
      h('label', { for: 'search-tags' }, 'Tags'),
      tags,
      h('label', { for: 'search-order' }, 'Order'),
      order,
      h('span', { class: 'check' }, mine, h('label', { for: 'search-mine' }, 'Only my videos')),
      h('button', { type: 'submit', class: 'primary' }, 'Search'),
    );
  }

  private async search(fresh: boolean): Promise<void> {
    const q = this.query;
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (q.text) params.set('query', q.text);
    if (q.tags) params.set('tags', q.tags.split(',').map((t) => t.trim()).filter(Boolean).join(','));
    if (q.mine && this.session.userId) params.set('owner_id', this.session.userId);
    params.set('order', q.text ? q.order : 'newest');
    if (!fresh && this.nextPage) params.set('page_token', this.nextPage);
    this.error.textContent = '';
    try {
      const page = await this.session.get<{ videos: Video[]; next_page_token?: string }>(`/videos?${params}`);
      if (fresh) fill(this.results);
      if (fresh && page.videos.length === 0) this.results.append(h('li', { class: 'empty' }, 'No videos found.'));
      this.results.append(...page.videos.map((v) => this.item(v)));
      this.nextPage = page.next_page_token ?? null;
      this.more.hidden = !this.nextPage;
    } catch (e) {
      this.error.textContent = (e as Error).message;
    }
  }

  private item(v: Video): HTMLElement {
    return h(
      'li',
      { class: 'video-item', 'data-video': v.id },
      h(
        'a',
        { href: `#/videos/${v.id}` },
        v.thumbnail_url ? h('img', { src: v.thumbnail_url, alt: '', loading: 'lazy' }) : h('span', { class: 'no-thumb', 'aria-hidden': 'true' }, '▶'),
        h('span', { class: 'video-title' }, v.title),
      ),
      h('span', { class: 'muted' }, `${duration(v.duration_s)} · ${shortTime(v.created_at)} · ${v.visibility}`),
      statusBadge(v),
    );
  }

  /** The video page: player, quality, details and sharing. */
  async open(id: string): Promise<void> {
    this.stopPlayer?.();
    this.stopPlayer = null;
    this.root.classList.add('has-detail');
    this.detail.dataset.video = id;
    fill(this.detail, h('p', {}, 'Loading…'));
    let v: Video;
    try {
      v = await this.session.get<Video>(`/videos/${id}`);
    } catch (e) {
      fill(this.detail, h('a', { href: '#/videos', class: 'back' }, '← Videos'), h('p', { class: 'error', role: 'alert' }, (e as Error).message));
      return;
    }
    if (this.detail.dataset.video !== id) return;
    const player = h('video', { id: 'player', controls: true, playsinline: true, muted: true, 'aria-label': `Video: ${v.title}` });
    const quality = h('select', { id: 'quality', disabled: true }, h('option', { value: '-1' }, 'Auto'));
    const shareError = h('p', { class: 'error', role: 'alert' });
    const target = h('select', { id: 'share-target' });
    const choices = await this.conversations().catch(() => []);
    fill(target, choices.map((c) => h('option', { value: c.id }, c.title)));
    const shareForm =
      v.status === 'ready' && choices.length > 0
        ? h(
            'form',
            {
              class: 'card share',
              onsubmit: async (event: Event) => {
                event.preventDefault();
                shareError.textContent = '';
                try {
                  await this.share(target.value, v.id);
                  location.hash = `#/chat/${target.value}`;
                } catch (e) {
                  shareError.textContent = (e as Error).message;
                }
              },
            },
            h('label', { for: 'share-target' }, 'Share in conversation'),
            target,
            h('button', { type: 'submit', class: 'primary' }, 'Share'),
            shareError,
          )
        : null;
    fill(
      this.detail,
      h('a', { href: '#/videos', class: 'back' }, '← Videos'),
      h('h2', {}, v.title),
      v.status === 'ready'
        ? [player, h('div', { class: 'row' }, h('label', { for: 'quality' }, 'Quality'), quality)]
        : h('p', {}, statusBadge(v), v.status === 'failed' ? ` ${v.failure_reason ?? ''}` : ' It will play here once processed.'),
      h('p', { class: 'muted' }, `${duration(v.duration_s)} · ${v.width ?? '?'}×${v.height ?? '?'} · ${v.visibility} · ${v.tags.map((t) => `#${t}`).join(' ')}`),
      v.description ? h('p', {}, v.description) : null,
      shareForm,
    );
    if (v.status === 'ready') {
      const stop = await play(player, v, quality);
      if (this.detail.dataset.video === id && this.detail.contains(player)) this.stopPlayer = stop;
      else stop();
    }
  }
}
