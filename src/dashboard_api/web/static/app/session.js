// The signed-in token and who it is. The token lives in sessionStorage: it lasts for the
// tab (a reload or a typed URL keeps the user signed in) and goes when the tab closes. It
// is sent only in the Authorization header and the WebSocket's subprotocol, never in a URL.
const KEY = "dashboard.token";
const listeners = new Set();

export const session = {
  token: sessionStorage.getItem(KEY),
  me: null, // {user_id, role, token_id} once checked
  notice: null, // why the user was signed out, shown on the sign-in form
};

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
  changed();
}

export function signOut(notice = null) {
  session.token = null;
  session.me = null;
  session.notice = notice;
  sessionStorage.removeItem(KEY);
  changed();
}

export function isAdmin() {
  return session.me?.role === "admin";
}
