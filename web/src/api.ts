// The REST client: one place for tokens (silent refresh, shared by every tab), problem
// documents turned into readable errors, and the v2 prefix.

export const API = '/api/v2';

/** An API error, from an RFC 9457 problem document. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly title: string,
    detail: string,
  ) {
    super(detail || title);
  }
}

interface Tokens {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  user_id: string;
}

interface StoredSession {
  user_id: string;
  access_token: string;
  refresh_token: string;
  /** Milliseconds since the epoch when the access token expires. */
  expires_at: number;
}

const KEY = 'tertulia.session';
/** Refresh this long before the access token expires. */
const EARLY_MS = 60_000;

function stored(): StoredSession | null {
  try {
    const raw = localStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as StoredSession) : null;
  } catch {
    return null;
  }
}

/** Reads a failed answer: a problem document when there is one. */
async function failure(response: Response): Promise<ApiError> {
  const type = response.headers.get('content-type') ?? '';
  if (type.includes('json')) {
    try {
      const p = (await response.json()) as { code?: string; title?: string; detail?: string };
      return new ApiError(response.status, p.code ?? 'error', p.title ?? response.statusText, p.detail ?? '');
    } catch {
      /* fall through */
    }
  }
  return new ApiError(response.status, 'error', response.statusText, `The server answered ${response.status}.`);
}

async function post<T>(path: string, body: unknown, token?: string): Promise<T> {
  let response: Response;
  try {
    response = await fetch(API + path, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify(body),
    });
  } catch {
    throw offline();
  }
  if (!response.ok) throw await failure(response);
  return (response.status === 204 ? undefined : await response.json()) as T;
}

function offline(): ApiError {
  return new ApiError(0, 'unavailable', 'Offline', 'Cannot reach Tertulia. Check your connection.');
}

/** Signed-in state and every authenticated call. */
export class Session {
  private current: StoredSession | null = stored();
  private timer = 0;
  /** Called when the session ends (sign-out here or in another tab, or a revoked token). */
  onEnded: (reason: string) => void = () => {};

  constructor() {
    window.addEventListener('storage', (event) => {
      if (event.key !== KEY) return;
      const next = stored();
      const wasSignedIn = this.current !== null;
      this.current = next;
      if (!next && wasSignedIn) this.ended('You signed out in another tab.');
      else this.schedule();
    });
    this.schedule();
  }

  get userId(): string | null {
    return this.current?.user_id ?? null;
  }

  async register(username: string, password: string, displayName: string): Promise<void> {
    await post('/auth/register', { username, password, ...(displayName ? { display_name: displayName } : {}) });
  }

  async signIn(username: string, password: string): Promise<void> {
    this.save(await post<Tokens>('/auth/login', { username, password }));
  }

  async signOut(): Promise<void> {
    const session = this.current;
    this.clear();
    if (session) {
      await post('/auth/logout', { refresh_token: session.refresh_token }, session.access_token).catch(() => {});
    }
  }

  /** A valid access token, refreshed first when it is about to expire. */
  async token(): Promise<string> {
    const session = this.current;
    if (!session) throw new ApiError(401, 'unauthenticated', 'Signed out', 'Sign in to go on.');
    if (session.expires_at - Date.now() > EARLY_MS) return session.access_token;
    await this.refresh(session.refresh_token);
    return this.current!.access_token;
  }

  /** Treats the access token as expired (the server refused it): the next call refreshes. */
  expire(): void {
    if (this.current) this.current.expires_at = 0;
  }

  /** Trades the refresh token for a new pair, once across every tab (Web Locks): a tab that
   * waited finds the pair another tab just got instead of spending a spent token. */
  private async refresh(spent: string): Promise<void> {
    const run = async () => {
      const latest = stored();
      if (latest && latest.refresh_token !== spent) {
        this.current = latest;
        return;
      }
      try {
        this.save(await post<Tokens>('/auth/refresh', { refresh_token: spent }));
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          this.clear();
          this.ended('Your session has ended. Sign in again.');
        }
        throw error;
      }
    };
    if (navigator.locks) await navigator.locks.request('tertulia.refresh', run);
    else await run();
  }

  /** An authenticated call; `undefined` for 204. Retries once after a 401 with a fresh token. */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const token = await this.token();
      let response: Response;
      try {
        response = await fetch(API + path, {
          method,
          headers: {
            authorization: `Bearer ${token}`,
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch {
        throw offline();
      }
      if (response.status === 401 && attempt === 0 && this.current) {
        this.expire();
        continue;
      }
      if (!response.ok) throw await failure(response);
      return (response.status === 204 ? undefined : await response.json()) as T;
    }
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }

  private save(tokens: Tokens): void {
    this.current = {
      user_id: tokens.user_id,
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      expires_at: Date.now() + tokens.expires_in * 1000,
    };
    localStorage.setItem(KEY, JSON.stringify(this.current));
    this.schedule();
  }

  private clear(): void {
    this.current = null;
    localStorage.removeItem(KEY);
    window.clearTimeout(this.timer);
  }

  private ended(reason: string): void {
    window.clearTimeout(this.timer);
    this.onEnded(reason);
  }

  /** Refreshes silently ahead of expiry, so a reconnecting socket always has a valid token. */
  private schedule(): void {
    window.clearTimeout(this.timer);
    const session = this.current;
    if (!session) return;
    const wait = Math.max(session.expires_at - Date.now() - EARLY_MS, 1000);
    this.timer = window.setTimeout(() => {
      this.token().then(
        () => this.schedule(),
        () => this.schedule(),
      );
    }, Math.min(wait, 2 ** 31 - 1));
  }
}
