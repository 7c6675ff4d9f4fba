import { useApp } from '../state/store';

export function presenceText(status: string | undefined): string {
  if (status === 'online') return 'online';
  if (status === 'away') return 'away';
  return 'offline';
}

/** A coloured dot with its meaning as text for screen readers (colour is never the only cue). */
export function PresenceDot({ user }: { user: string }) {
  const status = useApp((s) => s.presence[user]?.status);
  const text = presenceText(status);
  return (
    <span className={`presence ${text}`} data-presence={text}>
      <span className="sr-only">({text}) </span>
    </span>
  );
}
