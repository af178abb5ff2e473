import { z } from 'zod';
import { globError, patternError } from '../core/patterns';

/** A glob as authors write it (schemas/patterns.ts: shell syntax, matched in linear time); refused when RE2 cannot run it. */
export const GlobField = z
  .string()
  .min(1)
  .max(200)
  .superRefine((g, ctx) => {
    const error = globError(g);
    if (error) ctx.addIssue({ code: 'custom', message: error });
  });

/** An RE2 regular expression of at most 1,000 characters; refused (lookaround, backreferences, bad syntax) when RE2 cannot run it. */
export const PatternField = z
  .string()
  .min(1)
  .max(1_000)
  .superRefine((source, ctx) => {
    const error = patternError(source);
    if (error) ctx.addIssue({ code: 'custom', message: error });
  });
