/* lupe.native.repl: line editing for `lupe repl` (libedit's own API, not its readline
 * emulation), plus the two small system helpers `lupe run --watch` needs: a file's
 * identity (to notice a rewrite) and a SIGHUP flag.
 *
 * One thread: while the editor waits for a key it polls stdin with a timeout and calls the
 * Lua `idle` function between keys, which drains the live session. Lua is entered from
 * libedit's callbacks (idle, completion) only while editor:read() runs, on the state that
 * called it. */
#define LUPE_LOG_PREFIX "repl: "
#include "cli_trust.h"
#include "log.h"
#include "lua_engine.h"
#include "lua_bindings.h"
#include "lua_util.h"
#include "session.h"

#include <errno.h>
#include <histedit.h>
#include <lauxlib.h>
#include <lua.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wchar.h>

#define EDITOR_MT "lupe.editor"

struct editor {
	EditLine *el;
	History *hist;
	lua_State *L;		/* the caller of read(); NULL outside it */
	int idle_ref;		/* registry refs, LUA_NOREF when unset */
	int complete_ref;
	int idle_ms;
	int idle_errors;	/* idle() failures: logged once, counted */
	char *prompt;		/* owned */
	char *history_path;	/* owned; NULL: no history file */
	bool interrupted;	/* the current read() was cut by Ctrl-C */
	bool tio_saved;		/* tio holds the terminal's settings, to restore */
	struct termios tio;
};

/* SIGINT while a line is being edited clears the line (not the process). A flag, because
 * nothing else is safe in a handler; the key reader checks it when poll() is interrupted. */
static volatile sig_atomic_t got_sigint;
static volatile sig_atomic_t got_sighup;

static void on_sigint(int sig)
{
	(void)sig;
	got_sigint = 1;
}

/* The state evaluating a REPL line while sigint_guard(true) is on: Ctrl-C then raises
 * "interrupted" in it through a hook, as the standalone interpreter does, instead of ending
 * lupe (and the live session with it). Hooks do not run inside JIT-compiled loops, so a
 * second Ctrl-C before the first took effect ends lupe the default way. */
static lua_State *guarded_L;
static struct sigaction guard_old;
static volatile sig_atomic_t interrupt_pending;

static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	lua_sethook(L, NULL, 0, 0);
	interrupt_pending = 0;
	luaL_error(L, "interrupted");
}

static void on_guarded_sigint(int sig)
{
	if (interrupt_pending || !guarded_L) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	interrupt_pending = 1;
	lua_sethook(guarded_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void on_sighup(int sig)
{
	(void)sig;
	got_sighup = 1;
}

static struct editor *editor_of(EditLine *el)
{
	struct editor *ed = NULL;

	el_get(el, EL_CLIENTDATA, &ed);
	return ed;
}

static char *prompt_fn(EditLine *el)
{
	struct editor *ed = editor_of(el);

	return ed && ed->prompt ? ed->prompt : (char *)"";
}

static void run_idle(struct editor *ed)
{
	lua_State *L = ed->L;

	if (!L || ed->idle_ref == LUA_NOREF)
		return;
	lua_rawgeti(L, LUA_REGISTRYINDEX, ed->idle_ref);
	if (lupe_pcall(L, 0, 0) != 0 && ed->idle_errors++ == 0)
		pr_warn("the background poll failed (reported once, counted)");
}

/* The key reader (EL_GETCFN): 1 with a character, 0 at end of input, -1 with errno set.
 * Between keys it runs idle() every idle_ms. A Ctrl-C ends the read with EINTR. */
static int getc_fn(EditLine *el, wchar_t *wc)
{
	struct editor *ed = editor_of(el);
	mbstate_t st;
	char c;

	memset(&st, 0, sizeof(st));
	for (;;) {
		struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
		ssize_t r;
		size_t k;
		int n;

		if (got_sigint) {
			got_sigint = 0;
			ed->interrupted = true;
			errno = EINTR;
			return -1;
		}
		n = poll(&p, 1, ed->idle_ref == LUA_NOREF ? -1 : ed->idle_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			run_idle(ed);
			continue;
		}
		r = read(STDIN_FILENO, &c, 1);
		if (r == 0)
			return 0;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		k = mbrtowc(wc, &c, 1, &st);
		if (k == (size_t)-2)
			continue;	/* the middle of a multibyte character */
		if (k == (size_t)-1)
			*wc = (unsigned char)c;	/* not valid here: pass the byte through */
		return 1;
	}
}

static int term_columns(void)
{
	struct winsize ws;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		return ws.ws_col;
	return 80;
}

/* Lists the candidates in columns below the line; libedit redraws the line after. */
static void show_candidates(lua_State *L, int idx)
{
	size_t i, n = lua_objlen(L, idx), w = 1, len;
	int cols, col = 0;

	for (i = 1; i <= n; i++) {
		lua_rawgeti(L, idx, (int)i);
		lua_tolstring(L, -1, &len);
		if (len + 2 > w)
			w = len + 2;
		lua_pop(L, 1);
	}
	cols = term_columns() / (int)w;
	if (cols < 1)
		cols = 1;
	fputc('\n', stdout);
	for (i = 1; i <= n; i++) {
		const char *s;

		lua_rawgeti(L, idx, (int)i);
		s = lua_tostring(L, -1);
		if (++col == cols || i == n) {
			printf("%s\n", s ? s : "");
			col = 0;
		} else {
			printf("%-*s", (int)w, s ? s : "");
		}
		lua_pop(L, 1);
	}
	fflush(stdout);
}

/* Tab: complete(text before the cursor) -> text to insert, {candidates}. */
static unsigned char complete_fn(EditLine *el, int ch)
{
	struct editor *ed = editor_of(el);
	const LineInfo *li = el_line(el);
	unsigned char rc = CC_REFRESH_BEEP;
	lua_State *L = ed ? ed->L : NULL;
	int top;

	(void)ch;
	if (!L || ed->complete_ref == LUA_NOREF)
		return CC_ERROR;
	top = lua_gettop(L);
	lua_rawgeti(L, LUA_REGISTRYINDEX, ed->complete_ref);
	lua_pushlstring(L, li->buffer, (size_t)(li->cursor - li->buffer));
	if (lupe_pcall(L, 1, 2) != 0)
		goto out;
	if (lua_type(L, -2) == LUA_TSTRING && lua_objlen(L, -2) > 0) {
		if (el_insertstr(el, lua_tostring(L, -2)) == 0)
			rc = CC_REFRESH;
	} else if (lua_istable(L, -1) && lua_objlen(L, -1) > 1) {
		show_candidates(L, lua_gettop(L));
		rc = CC_REDISPLAY;
	}
out:
	lua_settop(L, top);
	return rc;
}

static struct editor *check_editor(lua_State *L, int idx)
{
	struct editor *ed = luaL_checkudata(L, idx, EDITOR_MT);

	if (!ed->el)
		luaL_argerror(L, idx, "editor is closed");
	return ed;
}

/* Keys typed while a line runs (type-ahead) must reach the editor as keys: in the
 * terminal's canonical mode, which the editor restores after each read, a Ctrl-D typed then
 * is an end of file the terminal consumes (the editor later reads a NUL), and the next
 * prompt waits for a key already sent. So between reads the terminal stays non-canonical
 * (echo stays: a Ctrl-C shows as ^C). */
static void typeahead_mode(struct editor *ed)
{
	struct termios t;

	if (!ed->tio_saved)
		return;
	t = ed->tio;
	t.c_lflag &= ~(tcflag_t)ICANON;
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	tcsetattr(STDIN_FILENO, TCSANOW, &t);
}

static void editor_release(lua_State *L, struct editor *ed)
{
	if (ed->hist) {
		history_end(ed->hist);
		ed->hist = NULL;
	}
	if (ed->el) {
		el_end(ed->el);
		ed->el = NULL;
	}
	if (ed->tio_saved) {
		tcsetattr(STDIN_FILENO, TCSANOW, &ed->tio);
		ed->tio_saved = false;
	}
	luaL_unref(L, LUA_REGISTRYINDEX, ed->idle_ref);
	luaL_unref(L, LUA_REGISTRYINDEX, ed->complete_ref);
	ed->idle_ref = ed->complete_ref = LUA_NOREF;
	free(ed->prompt);
	free(ed->history_path);
	ed->prompt = ed->history_path = NULL;
}

static int take_ref(lua_State *L, int opts, const char *field)
{
	lua_getfield(L, opts, field);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return LUA_NOREF;
	}
	if (!lua_isfunction(L, -1))
		luaL_argerror(L, opts, lua_pushfstring(L, "'%s' must be a function", field));
	return luaL_ref(L, LUA_REGISTRYINDEX);
}

static char *opt_strdup(lua_State *L, int opts, const char *field, const char *def)
{
	const char *s;
	char *copy;

	lua_getfield(L, opts, field);
	s = luaL_optstring(L, -1, def);
	copy = s ? strdup(s) : NULL;
	lua_pop(L, 1);
	if (s && !copy)
		luaL_error(L, "editor: out of memory");
	return copy;
}

/* editor{prompt=, history=path, idle=fn, idle_ms=50, complete=fn} -> editor
 * history: the file lines are loaded from and saved to after each add(). */
static int l_editor(lua_State *L)
{
	struct editor *ed;
	HistEvent ev;

	luaL_checktype(L, 1, LUA_TTABLE);
	ed = lua_newuserdata(L, sizeof(*ed));
	memset(ed, 0, sizeof(*ed));
	ed->idle_ref = ed->complete_ref = LUA_NOREF;
	luaL_getmetatable(L, EDITOR_MT);
	lua_setmetatable(L, -2);

	ed->prompt = opt_strdup(L, 1, "prompt", "> ");
	ed->history_path = opt_strdup(L, 1, "history", NULL);
	lua_getfield(L, 1, "idle_ms");
	ed->idle_ms = (int)luaL_optinteger(L, -1, 50);
	lua_pop(L, 1);
	ed->idle_ref = take_ref(L, 1, "idle");
	ed->complete_ref = take_ref(L, 1, "complete");

	ed->tio_saved = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &ed->tio) == 0;
	typeahead_mode(ed);
	ed->el = el_init("lupe", stdin, stdout, stderr);
	ed->hist = history_init();
	if (!ed->el || !ed->hist) {
		int err = errno ? -errno : -ENOMEM;

		editor_release(L, ed);
		return lupe_push_errno(L, err, "editor");
	}
	history(ed->hist, &ev, H_SETSIZE, 1000);
	history(ed->hist, &ev, H_SETUNIQUE, 1);
	if (ed->history_path)
		history(ed->hist, &ev, H_LOAD, ed->history_path);	/* missing: a first run */

	el_set(ed->el, EL_CLIENTDATA, ed);
	el_set(ed->el, EL_EDITOR, "emacs");
	el_set(ed->el, EL_PROMPT, prompt_fn);
	el_set(ed->el, EL_HIST, history, ed->hist);
	el_set(ed->el, EL_GETCFN, getc_fn);
	/* The wide call: libedit keeps these pointers (static here), whereas its narrow
	 * EL_ADDFN wrapper copies them with wcsdup() and never frees the copies. */
	el_wset(ed->el, EL_ADDFN, L"lupe-complete", L"complete a Lua name", complete_fn);
	el_set(ed->el, EL_BIND, "^I", "lupe-complete", NULL);
	/* ~/.editrc may rebind keys, as in every libedit program. */
	el_source(ed->el, NULL);
	return 1;
}

/* Empties the edit buffer after a Ctrl-C, so the next prompt starts clean. */
static void clear_line(EditLine *el)
{
	const LineInfo *li = el_line(el);

	el_cursor(el, (int)(li->lastchar - li->cursor));
	li = el_line(el);
	el_deletestr(el, (int)(li->cursor - li->buffer));
}

/* editor:read() -> line (no newline) | nil, "eof" | nil, "interrupted" */
static int l_read(lua_State *L)
{
	struct editor *ed = check_editor(L, 1);
	struct sigaction sa = { .sa_handler = on_sigint }, old;
	const char *line;
	int count = 0, err = 0;

	if (ed->L)
		return luaL_error(L, "editor:read() is already running");
	/* No SA_RESTART: poll() must return so that the line is cleared at once. */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old);
	got_sigint = 0;
	ed->interrupted = false;
	ed->L = L;
	line = el_gets(ed->el, &count);
	if (!line)
		err = errno;
	typeahead_mode(ed);
	ed->L = NULL;
	sigaction(SIGINT, &old, NULL);

	if (ed->interrupted) {
		clear_line(ed->el);
		fputs("^C\n", stdout);
		fflush(stdout);
		lua_pushnil(L);
		lua_pushliteral(L, "interrupted");
		return 2;
	}
	if (!line || count <= 0) {
		lua_pushnil(L);
		if (count < 0)
			lua_pushstring(L, lupe_errstr(err));
		else
			lua_pushliteral(L, "eof");
		return 2;
	}
	if (count > 0 && line[count - 1] == '\n')
		count--;
	lua_pushlstring(L, line, (size_t)count);
	return 1;
}

/* editor:add(line): into the history, saved at once (a crash keeps it). */
static int l_add(lua_State *L)
{
	struct editor *ed = check_editor(L, 1);
	const char *line = luaL_checkstring(L, 2);
	HistEvent ev;

	if (!*line)
		return 0;
	history(ed->hist, &ev, H_ENTER, line);
	if (ed->history_path)
		history(ed->hist, &ev, H_SAVE, ed->history_path);
	return 0;
}

static int l_set_prompt(lua_State *L)
{
	struct editor *ed = check_editor(L, 1);
	char *p = strdup(luaL_checkstring(L, 2));

	if (!p)
		return luaL_error(L, "editor: out of memory");
	free(ed->prompt);
	ed->prompt = p;
	return 0;
}

static int l_editor_close(lua_State *L)
{
	struct editor *ed = luaL_checkudata(L, 1, EDITOR_MT);

	if (ed->L)
		return luaL_error(L, "editor:close() inside read()");
	editor_release(L, ed);
	return 0;
}

static int l_editor_tostring(lua_State *L)
{
	struct editor *ed = luaL_checkudata(L, 1, EDITOR_MT);

	lua_pushfstring(L, "lupe.editor (%s)", ed->el ? "open" : "closed");
	return 1;
}

/* file_id(path) -> "dev:ino:size:mtime" that changes when the file is rewritten or
 * replaced (editors rename over it), or nil, msg, errno. */
static int l_file_id(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;
	char buf[128];

	if (stat(path, &st) != 0)
		return lupe_push_errno(L, -errno, path);
	snprintf(buf, sizeof(buf), "%llu:%llu:%lld:%lld.%09ld", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino, (long long)st.st_size,
		 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	lua_pushstring(L, buf);
	return 1;
}

/* SIGHUP sets a flag instead of ending the process; sighup_take() reads and clears it. */
static int l_sighup_install(lua_State *L)
{
	struct sigaction sa = { .sa_handler = on_sighup, .sa_flags = SA_RESTART };

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGHUP, &sa, NULL) != 0)
		return lupe_push_errno(L, -errno, "sigaction");
	lua_pushboolean(L, 1);
	return 1;
}

static int l_sighup_take(lua_State *L)
{
	lua_pushboolean(L, got_sighup);
	got_sighup = 0;
	return 1;
}

/* sigint_guard(on): while on, Ctrl-C interrupts the Lua code running in this state. */
static int l_sigint_guard(lua_State *L)
{
	struct sigaction sa = { .sa_handler = on_guarded_sigint };
	bool on = lua_toboolean(L, 1);

	if (on && !guarded_L) {
		sigemptyset(&sa.sa_mask);
		guarded_L = L;
		interrupt_pending = 0;
		sigaction(SIGINT, &sa, &guard_old);
	} else if (!on && guarded_L) {
		sigaction(SIGINT, &guard_old, NULL);
		lua_sethook(guarded_L, NULL, 0, 0);
		guarded_L = NULL;
	}
	return 0;
}

static int l_euid(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)geteuid());
	return 1;
}

static int l_isatty(lua_State *L)
{
	lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, STDIN_FILENO)));
	return 1;
}

/* check_trusted(path) -> true | nil, why, errno: may root load path (cli_trust.h)? */
static int l_check_trusted(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char why[4200];
	int err = lupe_cli_check_trusted(path, why, sizeof(why));

	if (err) {
		lua_pushnil(L);
		lua_pushstring(L, why);
		lua_pushinteger(L, -err);
		return 3;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* The process manager of a live session, for ps() and maps(pid). lua_session.c's
 * "lupe.session" userdata holds the session pointer as its only field (NULL once closed);
 * the manager is borrowed from the session for the length of one call. */
/* session_processes(native_session) and session_mappings(native_session, pid): what
 * pm:processes() and pm:mappings(pid) of lupe.procmgr give, for the session's manager. */
static int l_session_processes(lua_State *L)
{
	return lupe_lua_push_processes(L, lupe_session__procmgr(lupe_lua_check_session(L, 1)));
}

static int l_session_mappings(lua_State *L)
{
	return lupe_lua_push_mappings(L, lupe_session__procmgr(lupe_lua_check_session(L, 1)),
				      luaL_checkint(L, 2));
}

static const luaL_Reg editor_methods[] = {
	{ "read", l_read },
	{ "add", l_add },
	{ "set_prompt", l_set_prompt },
	{ "close", l_editor_close },
	{ NULL, NULL },
};

static const luaL_Reg repl_funcs[] = {
	{ "editor", l_editor },
	{ "file_id", l_file_id },
	{ "sighup_install", l_sighup_install },
	{ "sighup_take", l_sighup_take },
	{ "isatty", l_isatty },
	{ "euid", l_euid },
	{ "sigint_guard", l_sigint_guard },
	{ "check_trusted", l_check_trusted },
	{ "session_processes", l_session_processes },
	{ "session_mappings", l_session_mappings },
	{ NULL, NULL },
};

int luaopen_lupe_repl(lua_State *L)
{
	static const luaL_Reg meta[] = {
		{ "__gc", l_editor_close }, { "__tostring", l_editor_tostring }, { NULL, NULL } };

	lupe_lua_class(L, EDITOR_MT, editor_methods, meta);
	lua_newtable(L);
	luaL_register(L, NULL, repl_funcs);
	return 1;
}
