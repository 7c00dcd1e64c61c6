// Preact + htm: components written as tagged templates, no build step. Everything that
// htm interpolates as a child is a text node (Preact never parses strings as HTML), which
// is how every stored string reaches the page as text.
import { h, render, Fragment } from "../vendor/preact.js";
import htm from "../vendor/htm.js";

export const html = htm.bind(h);
export { h, render, Fragment };
export {
  useState,
  useEffect,
  useRef,
  useMemo,
  useCallback,
  useReducer,
  useLayoutEffect,
} from "../vendor/hooks.js";
