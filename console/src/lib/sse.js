// A Server-Sent Events parser for `fetch` streams. /api/chat needs a Bearer
// token, which EventSource cannot send, so the chat reads the response body
// itself; the parsing follows the WHATWG event-stream rules (fields, comments,
// CR/LF/CRLF line ends, multi-line data).

export class SseParser {
  #buf = '';
  #event = '';
  #data = [];
  #id = null;

  /** Feeds decoded text; returns the events completed by it. */
  push(text) {
    this.#buf += text;
    const out = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.#buf);
      if (!m) break;
      // A CR at the very end may be the first half of a CRLF: wait for more.
      if (m[0] === '\r' && m.index === this.#buf.length - 1) break;
      const line = this.#buf.slice(0, m.index);
      this.#buf = this.#buf.slice(m.index + m[0].length);
      const ev = this.#line(line);
      if (ev) out.push(ev);
    }
    return out;
  }

  /**
   * Ends the stream. An event left without its closing blank line is still
   * delivered: a server that forgets the last newline loses nothing.
   */
  end() {
    const out = [];
    if (this.#buf) {
      const ev = this.#line(this.#buf);
      this.#buf = '';
      if (ev) out.push(ev);
    }
    const ev = this.#dispatch();
    if (ev) out.push(ev);
    return out;
  }

  #line(line) {
    if (line === '') return this.#dispatch();
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.#event = value;
    else if (field === 'data') this.#data.push(value);
    else if (field === 'id') this.#id = value;
    return null;
  }

  #dispatch() {
    const hasData = this.#data.length > 0;
    const ev = { event: this.#event || 'message', data: this.#data.join('\n'), id: this.#id };
    this.#event = '';
    this.#data = [];
    return hasData ? ev : null;
  }
}

/**
 * Reads an event-stream response, calling `onEvent({event, data, id})` for
 * each event; stops early when `onEvent` returns false.
 */
export async function readSse(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const events = done ? parser.end() : parser.push(decoder.decode(value, { stream: true }));
      for (const ev of events) {
        if (onEvent(ev) === false) {
          await reader.cancel().catch(() => {});
          return;
        }
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock?.();
  }
}
