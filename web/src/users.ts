// Names of the people on screen, looked up by id once and remembered.

import type { Session } from './api';
import type { User } from './types';

export class Directory {
  private users = new Map<string, User>();

  constructor(private readonly session: Session) {}

  remember(users: User[]): void {
    for (const u of users) this.users.set(u.user_id, u);
  }

  /** Looks up the ids not known yet (200 at a time). */
  async want(ids: string[]): Promise<void> {
    const missing = [...new Set(ids)].filter((id) => id && !this.users.has(id));
    for (let i = 0; i < missing.length; i += 200) {
      const chunk = missing.slice(i, i + 200);
      const page = await this.session.get<{ users: User[] }>(`/users?ids=${chunk.map(encodeURIComponent).join(',')}`);
      this.remember(page.users);
    }
  }

  name(id: string): string {
    return this.users.get(id)?.display_name ?? 'Someone';
  }
}
