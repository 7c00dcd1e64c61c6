// The signed-in token and who it is. The token lives in sessionStorage: it lasts for the
// tab (a reload or a typed URL keeps the user signed in) and goes when the tab closes. It
// is sent only in the Authorization header and the WebSocket's subprotocol, never in a URL.
const KEY = "dashboard.token";
const ME_KEY = "dashboard.me"; // who the token is, so a reload renders before re-checking it
const NOTICE_KEY = "dashboard.notice"; // why the tab was signed out, shown after a reload too
const listeners = new Set();

export const session = {
  token: sessionStorage.getItem(KEY),
  me: readMe(), // {user_id, role, token_id} once checked
  notice: sessionStorage.getItem(NOTICE_KEY), // why the tab was signed out (sign-in form)
};

function readMe() {
  try {
    return sessionStorage.getItem(KEY) ? JSON.parse(sessionStorage.getItem(ME_KEY)) : null;
  } catch {
    return null;
  }
}

export function onSessionChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function changed() {
  for (const fn of [...listeners]) fn(session);
}

export function signIn(token, me) {
  session.token = token;
  session.me = me;
  session.notice = null;
  sessionStorage.setItem(KEY, token);
  sessionStorage.setItem(ME_KEY, JSON.stringify(me));
  sessionStorage.removeItem(NOTICE_KEY);
  changed();
}

export function signOut(notice = null) {
  session.token = null;
  session.me = null;
  session.notice = notice;
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ME_KEY);
  if (notice) sessionStorage.setItem(NOTICE_KEY, notice);
  else sessionStorage.removeItem(NOTICE_KEY);
  changed();
}

export function isAdmin() {
  return session.me?.role === "admin";
}
