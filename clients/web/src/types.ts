// The engine's JSON, as the screens read it (the Rust types serialized by serde).

export interface Stamp {
  at: number;
  device: string;
  device_kind: string;
  user: string;
}

export interface SavedResult {
  event: string;
  stamp: Stamp;
  result_type: string;
  option: { kind: 'none' } | { kind: 'recall'; at: number } | { kind: 'restriction'; until: number };
  customer_status?: string;
  memo?: string;
}

export interface CallView {
  call: string;
  origin_stamp: Stamp;
  origin: { kind: 'dialed'; destination: string; origin: string; recording: boolean } | { kind: 'manual'; number: string };
  phase: string;
  flags: string[];
  started_at: number | null;
  phone_ended: [number, number] | null;
  browser_ended_at: number | null;
  cancelled_at: number | null;
  expired_at: number | null;
  results: SavedResult[];
}

export interface PhoneEntry {
  label: string;
  number: string;
}

export interface Customer {
  id: string;
  company: string;
  contact: string;
  owner: string;
  status: string;
  phones: PhoneEntry[];
  recall_at: number | null;
  restriction_until: number | null;
  calls: CallView[];
}

export interface TimelineEntry {
  call: string;
  event: string;
  stamp: Stamp;
  kind: string | Record<string, unknown>;
  ignored: string | null;
}

export interface CustomerDetail {
  customer: Customer;
  timeline: TimelineEntry[];
}

export interface CustomerSummary {
  id: string;
  company: string;
  contact: string;
  owner: string;
  status: string;
}

export interface DeviceSummary {
  id: string;
  kind: string;
  online: boolean;
}

export interface ResultTypeSpec {
  id: string;
  label_ja: string;
  label_en: string;
  options: string[];
  default_status: string | null;
  reached_person: boolean;
}

export interface RecallSummary {
  id: string;
  company: string;
  owner: string;
  recallAt: number;
}

export interface UserCallStats {
  user: string;
  calls: number;
  results: number;
  reached: number;
}

/** The kind of a timeline entry's event (`requested`, `cancelled`, …). */
export function eventKind(kind: TimelineEntry['kind']): string {
  return typeof kind === 'string' ? kind : (Object.keys(kind)[0] ?? '');
}

