// The engine's types as the screens read them: generated from the Rust types
// (`src/generated/`, written by `cargo test -p callsync-web --test typescript`
// with CALLSYNC_BLESS=1 and checked by it), never copied by hand.

export type { CallView } from './generated/CallView';
export type { Customer } from './generated/Customer';
export type { CustomerDetail } from './generated/CustomerDetail';
export type { CustomerListing } from './generated/CustomerListing';
export type { CustomerSummary } from './generated/CustomerSummary';
export type { DeviceSummary } from './generated/DeviceSummary';
export type { EngineEvent } from './generated/EngineEvent';
export type { ErrorBody } from './generated/ErrorBody';
export type { ErrorView } from './generated/ErrorView';
export type { LoginAnswer } from './generated/LoginAnswer';
export type { MemberSummary } from './generated/MemberSummary';
export type { OptionKind } from './generated/OptionKind';
export type { PageState } from './generated/PageState';
export type { PhoneEntry } from './generated/PhoneEntry';
export type { PluginListing } from './generated/PluginListing';
export type { RecallSummary } from './generated/RecallSummary';
export type { RecordingLink } from './generated/RecordingLink';
export type { ResultCatalog } from './generated/ResultCatalog';
export type { ResultForm } from './generated/ResultForm';
export type { ResultTypeSpec } from './generated/ResultTypeSpec';
export type { Role } from './generated/Role';
export type { RpcCall } from './generated/RpcCall';
export type { RpcResult } from './generated/RpcResult';
export type { SavedResult } from './generated/SavedResult';
export type { SaveOutcomeView } from './generated/SaveOutcomeView';
export type { Stamp } from './generated/Stamp';
export type { TimelineEntry } from './generated/TimelineEntry';
export type { Unsent } from './generated/Unsent';
export type { UploadState } from './generated/UploadState';
export type { UserCallStats } from './generated/UserCallStats';
export type { Vocabulary } from './generated/Vocabulary';

import type { ErrorBody } from './generated/ErrorBody';
import type { RpcResult } from './generated/RpcResult';
import type { TimelineEntry } from './generated/TimelineEntry';

/** The kind of a timeline entry's event (`requested`, `cancelled`, …). */
export function eventKind(kind: TimelineEntry['kind']): string {
  return typeof kind === 'string' ? kind : (Object.keys(kind)[0] ?? '');
}

/** The server's refusal, if the answer is one. */
export function refusalOf(result: RpcResult): ErrorBody | undefined {
  return typeof result === 'object' && 'refused' in result ? result.refused : undefined;
}

type Answers = Exclude<RpcResult, string>;
type AnswerKey = Answers extends infer A ? (A extends Record<infer K, unknown> ? K : never) : never;
type AnswerOf<K extends AnswerKey> = Answers extends infer A ? (A extends Record<K, infer V> ? V : never) : never;

/** The answer's `key` part (`users`, `customers`, …), if the answer is of that kind. */
export function answerOf<K extends AnswerKey>(result: RpcResult, key: K): AnswerOf<K> | undefined {
  return typeof result === 'object' && key in result ? (result as Record<K, AnswerOf<K>>)[key] : undefined;
}
