// The event-stream parser behind the chat: fields, comments, line ends and
// events split across chunks at any byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser } from '../src/lib/sse.js';

const STREAM =
  ': keep-alive\n' +
  'event: conversation\ndata: {"conversation_id":"c1"}\n\n' +
  'event: text\r\ndata: {"delta":"Hel"}\r\n\r\n' +
  'event: text\rdata: {"delta":"lo"}\r\r' +
  'data: line one\ndata: line two\n\n' +
  'event: done\ndata:{"steps":2}\n\n';

const EXPECTED = [
  { event: 'conversation', data: '{"conversation_id":"c1"}', id: null },
  { event: 'text', data: '{"delta":"Hel"}', id: null },
  { event: 'text', data: '{"delta":"lo"}', id: null },
  { event: 'message', data: 'line one\nline two', id: null },
  { event: 'done', data: '{"steps":2}', id: null },
];

test('a whole stream parses into its events', () => {
  const p = new SseParser();
  assert.deepEqual([...p.push(STREAM), ...p.end()], EXPECTED);
});

test('any split into two chunks gives the same events', () => {
  for (let i = 0; i <= STREAM.length; i++) {
    const p = new SseParser();
    const got = [...p.push(STREAM.slice(0, i)), ...p.push(STREAM.slice(i)), ...p.end()];
    assert.deepEqual(got, EXPECTED, `split at ${i}`);
  }
});

test('a last event without its blank line is still delivered', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('event: done\ndata: {}'), []);
  assert.deepEqual(p.end(), [{ event: 'done', data: '{}', id: null }]);
});

test('ids are kept and events without data are dropped', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('id: 7\nevent: x\n\nid: 8\ndata: d\n\n'), [
    { event: 'message', data: 'd', id: '8' },
  ]);
});
