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
  /** Around pages: whether older / newer messages exist beyond the page. */
  has_more_before?: boolean;
  has_more_after?: boolean;
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

export interface UploadView {
  upload_id: string;
  conversation: string;
  size: number;
  content_type: string;
  offset: number;
  max_chunk_bytes: number;
  expires_ms: number;
}

export interface FileView {
  file_id: string;
  conversation: string;
  size: number;
  content_type: string;
  created_ms: number;
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
/** One PATCH of at most 1 MiB: 60 s is 17 KB/s, a very bad mobile link. */
const UPLOAD_REQUEST_TIMEOUT_MS = 60_000;

export class HttpApi {
  constructor(
    private readonly base = '/api/v1',
    private token?: string,
  ) {}

  setToken(token: string | undefined): void {
    this.token = token;
  }

  private async call<T>(
    method: string,
    path: string,
    body?: unknown,
    signal?: AbortSignal,
  ): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await this.fetch(
      method,
      path,
      headers,
      body === undefined ? undefined : JSON.stringify(body),
      signal,
    );
    if (res.status === 204) return undefined as T;
    return HttpApi.json<T>(res);
  }

  private fetch(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: BodyInit | undefined,
    signal: AbortSignal | undefined,
    timeoutMs = REQUEST_TIMEOUT_MS,
  ): Promise<Response> {
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const timeout = AbortSignal.timeout(timeoutMs);
    return fetch(this.base + path, {
      method,
      headers,
      body,
      credentials: 'omit',
      cache: 'no-store',
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
  }

  private static async json<T>(res: Response): Promise<T> {
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
  /** The messages around `seq` (about half before, half after, and `seq` itself): the context
   * of a search result. Members only; a former member gets nothing past its departure. */
  historyAround(conversation: string, seq: number, limit: number): Promise<HistoryPageView> {
    const q = new URLSearchParams({ around: String(seq), limit: String(limit) });
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

  // ---- files: resumable uploads, signed download URLs ---------------------------------------
  createUpload(
    body: { conversation: string; size: number; content_type: string },
    signal?: AbortSignal,
  ): Promise<UploadView> {
    return this.call('POST', '/uploads', body, signal);
  }
  /** Appends `bytes` at `offset`; resolves to the server's new durable offset. */
  async patchUpload(
    id: string,
    offset: number,
    bytes: Uint8Array,
    signal?: AbortSignal,
  ): Promise<number> {
    const res = await this.fetch(
      'PATCH',
      `/uploads/${id}`,
      { 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
      bytes as BodyInit,
      signal,
      UPLOAD_REQUEST_TIMEOUT_MS,
    );
    if (!res.ok) await HttpApi.json(res);
    return Number(res.headers.get('Upload-Offset') ?? offset + bytes.length);
  }
  /** The bytes the server holds durably (where a resumed upload continues). */
  async uploadOffset(id: string, signal?: AbortSignal): Promise<number> {
    const res = await this.fetch('HEAD', `/uploads/${id}`, {}, undefined, signal);
    if (!res.ok)
      throw new ApiError(res.status, `http_${res.status}`, `upload ${id}: HTTP ${res.status}`);
    return Number(res.headers.get('Upload-Offset') ?? 0);
  }
  finishUpload(id: string, signal?: AbortSignal): Promise<FileView> {
    return this.call('POST', `/uploads/${id}/finish`, undefined, signal);
  }
  deleteUpload(id: string): Promise<void> {
    return this.call('DELETE', `/uploads/${id}`);
  }
  /** A short-lived URL (path + query) that downloads the encrypted file without the token. */
  fileUrl(id: string): Promise<{ url: string; expires_ms: number }> {
    return this.call('POST', `/files/${id}/url`);
  }
}
