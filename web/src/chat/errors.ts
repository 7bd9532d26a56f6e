// Error codes in plain words, and whether asking again makes sense.

import type { ErrorCode } from './types';

const WORDS: Record<string, string> = {
  overloaded: 'The service is busy right now and could not take your question.',
  rate_limited: 'Too many questions at once. Wait for an answer to finish, then try again.',
  model_failed: 'The model failed while answering.',
  retries_exhausted: 'The answer failed several times in a row and was given up.',
  too_large: 'This question is too long.',
  bad_request: 'The question could not be sent.',
  unauthorized: 'This conversation has expired or is no longer accessible from this browser.',
  forbidden: 'This page may not open the chat connection.',
  not_found: 'This conversation no longer exists.',
  internal: 'Something went wrong on the server.',
  replay_expired: 'Part of this conversation is too old to replay.',
};

export function plainWords(code: ErrorCode, message?: string): string {
  return WORDS[code] ?? message ?? 'Something went wrong.';
}

/** Asking the same question again may work for these. */
export function isRetryable(code: ErrorCode): boolean {
  return ['overloaded', 'rate_limited', 'model_failed', 'retries_exhausted', 'internal'].includes(code);
}
