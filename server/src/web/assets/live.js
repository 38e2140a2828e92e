// The page's one live stream (Server-Sent Events read with fetch, so it can carry the token).
// It remembers the server's epoch and the last sequence number of every stream it was sent: a
// reconnect to the same server resumes exactly there; to a restarted one (another epoch) the
// page gets the new buffers and keeps what it has (rows are keyed, so nothing is shown twice).

const token = () => sessionStorage.getItem("pitwall-token") || "";

/** `fetch` with the token, when the page has one. */
export function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  return fetch(path, { ...init, headers });
}

export class Live {
  /**
   * @param {(kind: string, data: object) => void} onEvent
   * @param {(state: string, detail?: string) => void} onState
   */
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.epoch = null;
    this.since = new Map();
    this.queries = [];
    this.lastMessage = 0;
    this.attempt = 0;
    this.ctrl = null;
    this.timer = null;
    this.state = "connecting";
    // A stream that says nothing for 5 s (the server ticks every second) is dead.
    setInterval(() => {
      if (this.state === "live" && Date.now() - this.lastMessage > 5000) this.reconnect("silent");
    }, 1000);
  }

  /** (Re)subscribes to these queries, keeping the sequence numbers of those it had. */
  follow(queries) {
    this.queries = [...queries].sort();
    this.reconnect("queries");
  }

  reconnect(why) {
    clearTimeout(this.timer);
    if (this.ctrl) this.ctrl.abort(why);
    this.connect();
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  async connect() {
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    const params = new URLSearchParams({ queries: this.queries.join(","), traces: "true" });
    if (this.epoch) {
      params.set("epoch", this.epoch);
      params.set("since", [...this.since].map(([q, s]) => `${q}:${s}`).join(","));
    }
    try {
      const resp = await api(`/api/live?${params}`, { signal: ctrl.signal });
      if (resp.status === 401) {
        this.setState("login");
        return;
      }
      if (!resp.ok) throw new Error((await resp.text()).trim() || resp.statusText);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          this.dispatch(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return; // replaced by a newer connection
      this.lastError = String(e.message || e);
    }
    if (ctrl !== this.ctrl) return;
    this.attempt += 1;
    this.setState("reconnecting", `attempt ${this.attempt}`);
    this.timer = setTimeout(() => this.connect(), Math.min(3000, 250 * 2 ** Math.min(this.attempt, 4)));
  }

  dispatch(block) {
    let kind = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trimStart();
    }
    if (!data) return; // keep-alive comment
    const d = JSON.parse(data);
    this.lastMessage = Date.now();
    if (kind === "hello") {
      if (d.epoch !== this.epoch) {
        this.epoch = d.epoch;
        this.since.clear();
      }
      this.attempt = 0;
      this.setState("live");
    } else if (kind === "rows") {
      const last = this.since.get(d.q);
      if (last !== undefined && d.seq <= last) return; // sent twice: never shown twice
      this.since.set(d.q, d.seq);
    }
    this.onEvent(kind, d);
  }
}
