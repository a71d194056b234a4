// The public API's shapes (v2), as documented in docs/api.

export interface User {
  user_id: string;
  username: string;
  display_name: string;
}

export type Content = { type: 'text'; text: string } | { type: 'video'; video_id: string };

export interface Message {
  id: string;
  conversation_id: string;
  seq: number;
  sender_id: string;
  client_msg_id: string;
  content: Content;
  reactions?: { emoji: string; user_ids: string[] }[];
  sent_at: string;
  edited_at?: string;
  deleted: boolean;
}

export interface Conversation {
  id: string;
  kind: 'direct' | 'group';
  title?: string;
  member_ids: string[];
  created_at: string;
  last_seq: number;
  last_message?: Message;
  unread: number;
}

export interface Presence {
  user_id: string;
  status: 'online' | 'offline';
  last_seen?: string;
}

export interface Rendition {
  name: string;
  width: number;
  height: number;
  bitrate: number;
}

export interface Video {
  id: string;
  owner_id: string;
  title: string;
  description: string;
  tags: string[];
  visibility: 'public' | 'unlisted' | 'private';
  status: 'awaiting_upload' | 'processing' | 'ready' | 'failed';
  failure_reason?: string;
  duration_s?: number;
  width?: number;
  height?: number;
  renditions: Rendition[];
  thumbnail_url?: string;
  playback?: { hls_url?: string; mp4_url?: string; expires_at?: string };
  created_at: string;
  upload?: { url: string; expires_at: string; max_size?: number };
}

/** A server frame of the real-time protocol. */
export type Frame =
  | { type: 'ready'; user_id: string; session_id: string }
  | { type: 'message' | 'message_updated' | 'reactions'; conversation_id: string; message: Message }
  | { type: 'ack'; client_msg_id: string; message: Message }
  | { type: 'receipt'; conversation_id: string; user_id: string; seq: number }
  | { type: 'typing'; conversation_id: string; user_id: string }
  | { type: 'presence'; user_id: string; status: 'online' | 'offline'; last_seen?: string }
  | { type: 'conversation'; conversation: Conversation }
  | { type: 'video'; video: Video }
  | { type: 'error'; code: string; message: string; client_msg_id?: string }
  | { type: 'pong' }
  | { type: 'deprecation' };
