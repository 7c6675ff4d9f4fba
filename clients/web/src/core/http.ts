// The HTTPS JSON API under /api/v1 (wire/src/api.rs shapes), same origin as the page.

export interface UserView {
  user_id: string;
  username: string;
}

export interface LoginResponse {
  token: string;
  user_id: string;
  username: string;
  expires_at_ms: number;
}

export interface MemberView {
  user_id: string;
  username: string;
  role: 'owner' | 'member';
}

export interface ConversationView {
  conversation_id: string;
  kind: 'direct' | 'group';
  name: string;
  description: string;
  members: MemberView[];
  last_seq: number;
}

export interface MessageView {
  seq: number;
  message_id: string;
  sender_user: string;
  sender_device: string;
  client_msg_id: string;
  timestamp_ms: number;
  content_type: string;
  payload_b64: string;
  files: { file_id: string; size: number; content_type: string }[];
}

export interface ReactionView {
  seq: number;
  emoji: string;
  count: number;
  users: string[];
}

export interface HistoryPageView {
  messages: MessageView[];
  reactions: ReactionView[];
  has_more: boolean;
}

export interface InvitationView {
  conversation_id: string;
  name: string;
  inviter_id: string;
  inviter: string;
  created_ms: number;
}

export interface DeviceView {
  device_id: string;
  created_ms: number;
  last_seen_ms: number;
  has_keys: boolean;
  identity_key: string;
}

export interface CertificateHash {
  algorithm: string;
  value: string;
}

export interface TransportInfo {
  webtransport_url: string;
  websocket_url: string;
  certificate_hashes: CertificateHash[];
  protocol_version: number;
  max_frame_bytes: number;
  /** Present once the server publishes the next certificate ahead of a rotation. */
  [extra: string]: unknown;
}

/** An API error in the documented `{"error": {"code", "message"}}` shape. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterS?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** How long one API call may take before it counts as failed (the network is gone). */
const REQUEST_TIMEOUT_MS = 15_000;

export class HttpApi {
  constructor(
    private readonly base = '/api/v1',
    private token?: string,
  ) {}

  setToken(token: string | undefined): void {
    this.token = token;
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const res = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const err = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
      const retry = res.headers.get('Retry-After');
      throw new ApiError(
        res.status,
        err?.code ?? `http_${res.status}`,
        err?.message ?? (res.statusText || `HTTP ${res.status}`),
        retry ? Number(retry) : undefined,
      );
    }
    return json as T;
  }

  register(username: string, password: string): Promise<UserView> {
    return this.call('POST', '/register', { username, password });
  }
  login(username: string, password: string): Promise<LoginResponse> {
    return this.call('POST', '/login', { username, password });
  }
  logout(): Promise<void> {
    return this.call('POST', '/logout');
  }
  me(): Promise<UserView> {
    return this.call('GET', '/me');
  }
  user(username: string): Promise<UserView> {
    return this.call('GET', `/users/${encodeURIComponent(username)}`);
  }
  conversations(): Promise<{ conversations: ConversationView[] }> {
    return this.call('GET', '/conversations');
  }
  createDirect(peer: string): Promise<ConversationView> {
    return this.call('POST', '/conversations/direct', { peer });
  }
  createGroup(name: string, description: string, members: string[]): Promise<ConversationView> {
    return this.call('POST', '/conversations/group', { name, description, members });
  }
  history(conversation: string, before: number, limit: number): Promise<HistoryPageView> {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before > 0) q.set('before', String(before));
    return this.call('GET', `/conversations/${conversation}/messages?${q.toString()}`);
  }
  invitations(): Promise<{ invitations: InvitationView[] }> {
    return this.call('GET', '/invitations');
  }
  invite(conversation: string, username: string): Promise<InvitationView> {
    return this.call('POST', `/conversations/${conversation}/invitations`, { username });
  }
  accept(conversation: string): Promise<ConversationView> {
    return this.call('POST', `/conversations/${conversation}/invitations/accept`);
  }
  decline(conversation: string): Promise<void> {
    return this.call('POST', `/conversations/${conversation}/invitations/decline`);
  }
  removeMember(conversation: string, username: string): Promise<void> {
    return this.call(
      'DELETE',
      `/conversations/${conversation}/members/${encodeURIComponent(username)}`,
    );
  }
  leave(conversation: string): Promise<void> {
    return this.call('POST', `/conversations/${conversation}/leave`);
  }
  devices(): Promise<{ devices: DeviceView[] }> {
    return this.call('GET', '/devices');
  }
  revokeDevice(id: string): Promise<void> {
    return this.call('DELETE', `/devices/${encodeURIComponent(id)}`);
  }
  putKeyBackup(body: { version: string; meta: string }): Promise<unknown> {
    return this.call('PUT', '/keys/backup', body);
  }
  keyBackup(): Promise<{ version: string; meta: string }> {
    return this.call('GET', '/keys/backup');
  }
  putBackupSessions(body: unknown): Promise<{ total: number }> {
    return this.call('PUT', '/keys/backup/sessions', body);
  }
  backupSessions(after?: string): Promise<{ sessions: unknown[]; next_after?: string | null }> {
    const q = after ? `?after=${encodeURIComponent(after)}` : '';
    return this.call('GET', `/keys/backup/sessions${q}`);
  }
  transport(): Promise<TransportInfo> {
    return this.call('GET', '/transport');
  }
}
