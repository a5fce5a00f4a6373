// The page's words: Japanese by default (the manual's words), English on the
// switch. Every string the screens show comes from here.

import { raceAdvice, vocabulary } from './pkg/callsync_web.js';
import type { Vocabulary } from './types';

export type Lang = 'ja' | 'en';

const ja = {
  appName: 'callsync',
  sep: ' ・ ',
  admin: '管理',
  adminOnly: 'この画面はアドミン以上のユーザーのみ利用できます',
  adminOffline: '管理画面はオンラインのときに利用できます',
  members: 'ユーザー',
  role: '権限',
  role_user: 'ユーザー',
  role_manager: 'マネージャー',
  role_admin: 'アドミン',
  role_owner: 'オーナー',
  contract: '通話契約',
  hasContract: '契約あり',
  noContract: '契約なし',
  grantContract: '通話契約を付与',
  revokeContract: '通話契約を取り消す',
  contractGranted: '通話契約を付与しました',
  contractRevoked: '通話契約を取り消しました（このユーザーの端末はログアウトされます）',
  newPassword: '新しいパスワード',
  resetPassword: 'パスワードを再設定',
  passwordReset: 'パスワードを再設定しました（このユーザーの端末はログアウトされます）',
  roleChanged: '権限を変更しました',
  addMember: 'ユーザーを追加',
  memberAdded: 'ユーザーを追加しました',
  visibility: '担当者閲覧制限',
  visibilityHelp: 'オンにすると、ユーザー権限のメンバーは自分が担当する顧客だけを閲覧できます。',
  visibilityOn: '担当者閲覧制限をオンにしました',
  visibilityOff: '担当者閲覧制限をオフにしました',
  turnOn: 'オンにする',
  turnOff: 'オフにする',
  plugins: '結果ルール（プラグイン）',
  pluginsNone: 'プラグインはまだインストールされていません（標準の結果種別で動作しています）。',
  pluginActive: '使用中',
  pluginRollBack: 'このバージョンに戻す',
  pluginRolledBack: 'ルールセットを元に戻しました',
  pluginInstall: 'プラグインをインストール',
  pluginFile: 'プラグインファイル（.wasm）',
  pluginSettings: '設定（1 行に KEY=VALUE を 1 つ）',
  pluginTimeZone: 'タイムゾーン',
  pluginHolidays: '休日の表（CSV、省略時は日本の祝日）',
  pluginInstalled: 'インストールしました',
  pluginTypes: '結果種別',
  pluginInstalledAt: 'インストール',
  pluginRuleset: 'ルールセット',
  pluginVersion: 'プラグイン',
  email: 'メールアドレス',
  password: 'パスワード',
  logIn: 'ログイン',
  logOut: 'ログアウト',
  loggingIn: 'ログインしています…',
  language: 'English',
  languageLabel: '表示言語',
  customers: '顧客情報',
  recalls: '再コール',
  dashboard: 'コール実績',
  search: '顧客を検索',
  company: '会社名',
  contact: '担当者名',
  owner: '担当ユーザー',
  status: '顧客ステータス',
  noCustomers: '顧客がありません。',
  moreCustomers: 'さらに表示',
  offline: 'オフライン（変更はこの端末に保存され、接続が戻ると同期されます）',
  online: 'オンライン',
  connecting: '接続しています…',
  unsentOnline: '未送信のコール結果が {n} 件あります。送信してからログアウトします。',
  unsentOffline: '未送信のコール結果が {n} 件あります。この端末に保存したまま、次にあなたがこの端末でログインしたときに送信します。',
  logOutAnyway: 'ログアウトする',
  notHeld: 'この顧客はまだこの端末にありません。接続が戻ると読み込みます。',
  loading: '読み込んでいます…',
  callTab: 'コール',
  timelineTab: 'タイムライン',
  historyTab: 'コール履歴',
  destination: '発信先電話番号',
  origin: '発信元電話番号',
  phoneOnline: 'スマートフォン接続中',
  phoneOffline: 'スマートフォン未接続（スリープを解除してください）',
  noPhone: 'スマートフォンが登録されていません',
  phonesUnknown: 'オフラインのため、スマートフォンの一覧は接続が戻るまでわかりません',
  statusUnchanged: '（コール結果の既定のステータス）',
  recording: '録音',
  recRecording: '録音中',
  recPending: '録音はアップロード待ちです',
  recWaitingWifi: '録音はWi-Fi接続を待っています',
  recQueued: '録音はアップロードの順番を待っています',
  recRetry: '録音のアップロードを再試行します:',
  recUploading: '録音をアップロード中',
  recStored: '録音あり',
  recDeleted: '録音は削除されました',
  recPlay: '録音を再生',
  recPlayFailed: '録音を再生できませんでした。もう一度お試しください',
  recDelete: '録音を削除',
  recDeleteConfirm: '録音を削除しますか？削除すると元に戻せません。',
  recDeleteYes: '削除する',
  recDeleteNo: 'やめる',
  callCustomer: '顧客にコール',
  cancelCall: 'コールをキャンセル',
  waiting:
    'callsyncでコールするには、callsyncモバイルアプリで「コール開始」ボタンをクリックする必要があります。',
  startLimitPassed:
    'callsyncモバイルアプリの「コール開始」ボタンを押さなかったため、開始されたコールはキャンセルされました。',
  cancelledMessage: 'コールをキャンセルしました。',
  inCall: '通話中',
  endCall: '通話を終了',
  endOnPhoneFirst: 'スマートフォンで通話を終了してから、こちらで終了してください。',
  resultTitle: 'コール結果を保存する',
  resultType: 'コール結果を保存',
  resultOption: 'コール結果オプション',
  date: '日時を選択する',
  time: '時刻',
  customerStatus: '顧客ステータスを選択する',
  memo: 'メモ',
  save: 'コール結果を保存',
  resultRequired: 'コール結果の保存は必須です。結果を保存するまでこの画面は閉じられません。',
  pickResult: 'コール結果を選択してください。',
  saved: 'コール結果を保存しました。',
  savedOffline: 'コール結果をこの端末に保存しました。接続が戻るとサーバーに送られます。',
  call: 'コール',
  callDetail: 'コール詳細',
  back: '戻る',
  phase: '状態',
  startedAt: '開始',
  duration: '通話時間',
  result: 'コール結果',
  noCalls: 'コールはまだありません。',
  manualCall: '手動コール',
  total: '合計',
  calls: 'コール数',
  reachedRate: '本人通話率',
  user: 'ユーザー',
  period: '期間',
  from: '開始日',
  to: '終了日',
  show: '表示',
  noRecalls: '再コール予定はありません。',
  recallAt: '再コール日時',
  refused: 'できませんでした',
} as const;

export type Key = keyof typeof ja;

const en: Record<Key, string> = {
  appName: 'callsync',
  sep: ' · ',
  admin: 'Admin',
  adminOnly: 'This screen is for admins and owners only.',
  adminOffline: 'The admin screens work while online.',
  members: 'Members',
  role: 'Role',
  role_user: 'User',
  role_manager: 'Manager',
  role_admin: 'Admin',
  role_owner: 'Owner',
  contract: 'Calling contract',
  hasContract: 'Holds it',
  noContract: 'Does not hold it',
  grantContract: 'Grant the calling contract',
  revokeContract: 'Revoke the calling contract',
  contractGranted: 'The calling contract was granted.',
  contractRevoked: "The calling contract was revoked (the member's devices are logged out).",
  newPassword: 'New password',
  resetPassword: 'Reset the password',
  passwordReset: "The password was reset (the member's devices are logged out).",
  roleChanged: 'The role was changed.',
  addMember: 'Add a member',
  memberAdded: 'The member was added.',
  visibility: 'Assignee visibility restriction',
  visibilityHelp: 'When on, members with the user role see only the customers assigned to them.',
  visibilityOn: 'The assignee visibility restriction is on.',
  visibilityOff: 'The assignee visibility restriction is off.',
  turnOn: 'Turn on',
  turnOff: 'Turn off',
  plugins: 'Result rules (plugins)',
  pluginsNone: 'No plugin is installed yet (the standard result types are in use).',
  pluginActive: 'In use',
  pluginRollBack: 'Roll back to this version',
  pluginRolledBack: 'The rule set was rolled back.',
  pluginInstall: 'Install a plugin',
  pluginFile: 'Plugin file (.wasm)',
  pluginSettings: 'Settings (one KEY=VALUE a line)',
  pluginTimeZone: 'Time zone',
  pluginHolidays: 'Holiday table (CSV; Japanese public holidays if none)',
  pluginInstalled: 'Installed',
  pluginTypes: 'Result types',
  pluginInstalledAt: 'Installed',
  pluginRuleset: 'Rule set',
  pluginVersion: 'Plugin',
  email: 'Email',
  password: 'Password',
  logIn: 'Log in',
  logOut: 'Log out',
  loggingIn: 'Logging in…',
  language: '日本語',
  languageLabel: 'Language',
  customers: 'Customers',
  recalls: 'Recalls',
  dashboard: 'Call performance',
  search: 'Search customers',
  company: 'Company',
  contact: 'Contact',
  owner: 'Assigned user',
  status: 'Customer status',
  noCustomers: 'No customers.',
  moreCustomers: 'Show more',
  offline: 'Offline (changes are kept on this device and sync when the connection returns)',
  online: 'Online',
  connecting: 'Connecting…',
  unsentOnline: '{n} call result(s) have not reached the server yet. They are sent first, then you are logged out.',
  unsentOffline: '{n} call result(s) have not reached the server yet. They stay on this device and are sent the next time you log in here.',
  logOutAnyway: 'Log out',
  notHeld: 'This customer is not on this device yet; it loads when the connection returns.',
  loading: 'Loading…',
  callTab: 'Call',
  timelineTab: 'Timeline',
  historyTab: 'Call history',
  destination: 'Destination number',
  origin: 'Origin',
  phoneOnline: 'Phone connected',
  phoneOffline: 'Phone not connected (wake it up)',
  noPhone: 'No phone registered',
  phonesUnknown: 'Offline: your phones are known once the connection returns',
  statusUnchanged: '(the result type\'s default status)',
  recording: 'Record',
  recRecording: 'Recording',
  recPending: 'The recording is waiting to upload',
  recWaitingWifi: 'The recording is waiting for Wi-Fi',
  recQueued: 'The recording is waiting for its turn to upload',
  recRetry: 'The recording upload will be retried at',
  recUploading: 'Uploading the recording',
  recStored: 'Recorded',
  recDeleted: 'The recording was deleted',
  recPlay: 'Play the recording',
  recPlayFailed: 'The recording could not be played. Please try again',
  recDelete: 'Delete the recording',
  recDeleteConfirm: 'Delete the recording? This cannot be undone.',
  recDeleteYes: 'Delete',
  recDeleteNo: 'Keep it',
  callCustomer: 'Call customer',
  cancelCall: 'Cancel call',
  waiting: 'To call, press “Start call” in the callsync mobile app.',
  startLimitPassed: 'The call was cancelled because “Start call” was not pressed in the callsync mobile app.',
  cancelledMessage: 'The call was cancelled.',
  inCall: 'In call',
  endCall: 'End call',
  endOnPhoneFirst: 'End the call on the phone first, then here.',
  resultTitle: 'Save the call result',
  resultType: 'Call result',
  resultOption: 'Result option',
  date: 'Date and time',
  time: 'Time',
  customerStatus: 'Customer status',
  memo: 'Memo',
  save: 'Save call result',
  resultRequired: 'Saving the call result is mandatory; this form stays until it is saved.',
  pickResult: 'Pick a call result.',
  saved: 'The call result was saved.',
  savedOffline: 'The call result is saved on this device; it reaches the server when the connection returns.',
  call: 'Call',
  callDetail: 'Call detail',
  back: 'Back',
  phase: 'State',
  startedAt: 'Started',
  duration: 'Duration',
  result: 'Result',
  noCalls: 'No calls yet.',
  manualCall: 'Manual call',
  total: 'Total',
  calls: 'Calls',
  reachedRate: 'Reached-person rate',
  user: 'User',
  period: 'Period',
  from: 'From',
  to: 'To',
  show: 'Show',
  noRecalls: 'No recalls due.',
  recallAt: 'Recall at',
  refused: 'Not done',
};

/** The engine's words (phases, event kinds, result options): the page keeps no list of its own. */
let loaded: Vocabulary | undefined;
function words(): Vocabulary {
  loaded ??= JSON.parse(vocabulary()) as Vocabulary;
  return loaded;
}

function say(lang: Lang, found: { en: string; ja: string } | undefined, fallback: string): string {
  return found ? (lang === 'ja' ? found.ja : found.en) : fallback;
}

/** Whether a call in this phase is still open (the engine's rule). */
export function isOpenPhase(phase: string): boolean {
  return words().phases.some((p) => p.name === phase && p.open);
}

/** An event kind (`requested`, `result-saved`, …) in words. */
export function eventText(lang: Lang, kind: string): string {
  return say(lang, words().events.find((e) => e.name === kind), kind);
}

/** A result option (`none`, `recall`, `restriction`) in words. */
export function optionText(lang: Lang, option: string): string {
  return say(lang, words().options.find((o) => o.name === option), option);
}

/** Conditions without advice (races are said by the engine: `raceAdvice`). */
const flags: Record<string, [string, string]> = {
  'concurrent-results': [
    '同じコールに複数のコール結果が保存されました。最新のものが有効です。',
    'Several results were saved for this call; the latest is in force.',
  ],
};

export function t(lang: Lang, key: Key): string {
  return lang === 'ja' ? ja[key] : en[key];
}

/** A phase in words, with what the desk should do in it, if anything. */
export function phaseText(lang: Lang, phase: string): string {
  const found = words().phases.find((p) => p.name === phase);
  if (!found) return phase;
  const advice = lang === 'ja' ? found.adviceJa : found.adviceEn;
  const base = lang === 'ja' ? found.ja : found.en;
  if (!advice) return base;
  return lang === 'ja' ? `${base}（${advice}）` : `${base}: ${advice}`;
}

/** A flag in words: a race's advice from the engine (the phone says the same), or the condition's name. */
export function flagText(lang: Lang, flag: string): string {
  const advice = raceAdvice(flag, lang === 'ja');
  if (advice !== undefined) return advice;
  const words = flags[flag];
  return words ? words[lang === 'ja' ? 0 : 1] : flag;
}

/** Whether a flag is a race the rep must act on (shown as an alert). */
export function isRace(flag: string): boolean {
  return raceAdvice(flag, false) !== undefined;
}

/** A time in the tenant's zone (Japan). */
export function formatTime(lang: Lang, ms: number): string {
  return new Intl.DateTimeFormat(lang === 'ja' ? 'ja-JP' : 'en-GB', {
    timeZone: 'Asia/Tokyo',
    dateStyle: 'medium',
    timeStyle: 'short',
  }).format(new Date(ms));
}
