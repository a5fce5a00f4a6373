// A call's recording on the page: its state in words (from the document, and
// from the phone while it still holds the file), a player for a stored one,
// and deletion for a manager or above. The server decides who may play and
// delete; the page asks and draws.
import { useState } from 'preact/hooks';
import { asRefusal, type PageSync } from './sync';
import { formatTime, isOpenPhase, t, type Lang } from './i18n';
import { isManager } from './dashboard';
import { answerOf, refusalOf, type CallView, type CustomerDetail, type RecordingLink, type UploadState } from './types';

/** `bytes` in the largest unit that keeps it above 1 (binary prefixes, one decimal). */
export function sizeText(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function mmss(ms: number): string {
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

/** What the phone says of an upload it still holds, in words. */
function uploadText(lang: Lang, upload: UploadState): string {
  switch (upload.state) {
    case 'uploading':
      return `${t(lang, 'recUploading')} ${upload.percent}%`;
    case 'waiting-for-wifi':
      return t(lang, 'recWaitingWifi');
    case 'queued':
      return t(lang, 'recQueued');
    case 'waiting-to-retry':
      return `${t(lang, 'recRetry')} ${formatTime(lang, upload.at)}`;
  }
}

export function Recording({ lang, sync, detail, view }: { lang: Lang; sync: PageSync; detail: CustomerDetail; view: CallView }) {
  const [link, setLink] = useState<RecordingLink | undefined>();
  const [error, setError] = useState<string | undefined>();
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const state = view.recording_state;
  if (state === 'none') return null;
  const say = (err: unknown) => {
    const refusal = asRefusal(err);
    setError(lang === 'ja' ? refusal.messageJa : refusal.message);
  };
  const play = async () => {
    setError(undefined);
    setBusy(true);
    try {
      const result = await sync.ask({ method: 'recording-link', call: view.call });
      const refused = refusalOf(result);
      if (refused) setError(lang === 'ja' ? refused.messageJa : refused.message);
      else setLink(answerOf(result, 'recording-link'));
    } catch (err) {
      say(err);
    } finally {
      setBusy(false);
    }
  };
  const remove = async () => {
    setError(undefined);
    setConfirming(false);
    try {
      await sync.act((d) => d.callEvent(Date.now(), detail.customer.id, view.call, 'recording-deleted'));
      setLink(undefined);
    } catch (err) {
      say(err);
    }
  };
  const deletion = [...detail.timeline].reverse().find((e) => e.call === view.call && e.kind === 'recording-deleted');
  const upload = sync.uploadOf(view.call);
  let words: string;
  if (state === 'stored' && view.recording) {
    words = `${t(lang, 'recStored')}${t(lang, 'sep')}${mmss(view.recording.duration_ms)}${t(lang, 'sep')}${sizeText(view.recording.size)}`;
  } else if (state === 'deleted') {
    words = deletion
      ? `${t(lang, 'recDeleted')}（${deletion.stamp.user}${t(lang, 'sep')}${formatTime(lang, deletion.stamp.at)}）`
      : t(lang, 'recDeleted');
  } else if (isOpenPhase(view.phase) && view.started_at !== null && !view.phone_ended) {
    words = t(lang, 'recRecording');
  } else if (upload) {
    words = uploadText(lang, upload);
  } else {
    words = t(lang, 'recPending');
  }
  const online = sync.online;
  return (
    <section class="recording" aria-label={t(lang, 'recording')} data-testid="recording" data-state={state}>
      <p role="status">{words}</p>
      {error && (
        <p class="alert" role="alert">
          {error}
        </p>
      )}
      {state === 'stored' && !link && (
        <button type="button" disabled={!online || busy} onClick={() => void play()}>
          {t(lang, 'recPlay')}
        </button>
      )}
      {state === 'stored' && link && (
        // The link is signed for this recording and expires; a player that
        // fails (e.g. seeking after it expired) is offered a new one.
        <audio
          controls
          autoPlay
          preload="auto"
          src={link.path}
          data-testid="player"
          onError={() => {
            setLink(undefined);
            setError(t(lang, 'recPlayFailed'));
          }}
        />
      )}
      {isManager(sync.login.role) && (state === 'stored' || state === 'pending') && !confirming && (
        <button type="button" onClick={() => setConfirming(true)}>
          {t(lang, 'recDelete')}
        </button>
      )}
      {confirming && (
        <p>
          {t(lang, 'recDeleteConfirm')}{' '}
          <button type="button" onClick={() => void remove()}>
            {t(lang, 'recDeleteYes')}
          </button>{' '}
          <button type="button" onClick={() => setConfirming(false)}>
            {t(lang, 'recDeleteNo')}
          </button>
        </p>
      )}
    </section>
  );
}
