/* lupe.native.session: a profiling session as a typed userdata. lupe/session.lua builds
 * the scripting surface (targets, hooks, run loop) on top of it. */
#include "log.h"
#include "lua_util.h"
#include "session.h"

#include <linux/types.h>
#include "sampler.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define SESSION_MT "lupe.session"

struct lsession {
	struct lupe_session *s;
};

static struct lupe_session *check_session(lua_State *L, int idx)
{
	struct lsession *u = luaL_checkudata(L, idx, SESSION_MT);

	if (!u->s)
		luaL_argerror(L, idx, "session is closed");
	return u->s;
}

static int ok_or_errno(lua_State *L, int err, const char *what)
{
	if (err < 0)
		return lupe_push_errno(L, err, what);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_new(lua_State *L)
{
	LUPE_OPTS(lupe_session_opts, opts);
	struct lsession *u;

	if (!lua_isnoneornil(L, 1)) {
		luaL_checktype(L, 1, LUA_TTABLE);
		lua_getfield(L, 1, "frequency");
		opts.frequency = lua_isnil(L, -1) ? 0 : (unsigned int)luaL_checkinteger(L, -1);
		lua_getfield(L, 1, "kernel");
		opts.no_kernel = !lua_isnil(L, -1) && !lua_toboolean(L, -1);
		lua_getfield(L, 1, "filter_error_frames");
		opts.filter_error_frames = lua_toboolean(L, -1);
		/* unwind = false: frame-pointer user stacks instead of the native unwinder. */
		lua_getfield(L, 1, "unwind");
		opts.no_unwind = !lua_isnil(L, -1) && !lua_toboolean(L, -1);
		lua_pop(L, 4);
		/* replay = FILE: a raw recording instead of BPF (kept on the stack until
		 * lupe_session__new has opened it). */
		lua_getfield(L, 1, "replay");
		opts.replay_path = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
	}
	u = lua_newuserdata(L, sizeof(*u));
	u->s = NULL;
	luaL_getmetatable(L, SESSION_MT);
	lua_setmetatable(L, -2);
	u->s = lupe_session__new(&opts);
	if (!u->s)
		return lupe_push_errno(L, errno, opts.replay_path ? "cannot replay the recording"
								  : "cannot start sampling");
	return 1;
}

static int l_close(lua_State *L)
{
	struct lsession *u = luaL_checkudata(L, 1, SESSION_MT);

	lupe_session__free(u->s);
	u->s = NULL;
	return 0;
}

static int l_target_system(lua_State *L)
{
	return ok_or_errno(L, lupe_session__target_system(check_session(L, 1)), "target system");
}

static int l_target_pids(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	size_t n, i;
	pid_t *pids;
	int err;

	luaL_checktype(L, 2, LUA_TTABLE);
	n = lua_objlen(L, 2);
	pids = calloc(n ? n : 1, sizeof(*pids));
	if (!pids)
		return lupe_push_errno(L, -ENOMEM, "target pids");
	for (i = 0; i < n; i++) {
		lua_rawgeti(L, 2, (int)i + 1);
		if (!lua_isnumber(L, -1) || lua_tointeger(L, -1) <= 0) {
			free(pids);
			return luaL_argerror(L, 2, "pids must be positive integers");
		}
		pids[i] = (pid_t)lua_tointeger(L, -1);
		lua_pop(L, 1);
	}
	err = lupe_session__target_pids(s, pids, n);
	free(pids);
	return ok_or_errno(L, err, "target pids");
}

static int l_target_cgroup(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	const char *path = luaL_checkstring(L, 2);

	return ok_or_errno(L, lupe_session__target_cgroup(s, path),
			   lua_pushfstring(L, "target cgroup '%s'", path));
}

static int l_start_command(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	size_t n, i;
	char **argv;
	int pid;

	luaL_checktype(L, 2, LUA_TTABLE);
	n = lua_objlen(L, 2);
	if (n == 0)
		return luaL_argerror(L, 2, "empty command");
	argv = calloc(n + 1, sizeof(*argv));
	if (!argv)
		return lupe_push_errno(L, -ENOMEM, "start command");
	for (i = 0; i < n; i++) {
		lua_rawgeti(L, 2, (int)i + 1);
		if (!lua_isstring(L, -1)) {
			free(argv);
			return luaL_argerror(L, 2, "command words must be strings");
		}
		argv[i] = (char *)lua_tostring(L, -1); /* kept alive by the table */
		lua_pop(L, 1);
	}
	pid = lupe_session__start_command(s, argv);
	if (pid < 0) {
		lua_pushfstring(L, "cannot run '%s'", argv[0]);
		free(argv);
		return lupe_push_errno(L, pid, lua_tostring(L, -1));
	}
	free(argv);
	lua_pushinteger(L, pid);
	return 1;
}

/* done, exit status as a shell reports it (128 + signal when killed) */
static int l_command_done(lua_State *L)
{
	int status = 0;
	bool done = lupe_session__command_done(check_session(L, 1), &status);

	lua_pushboolean(L, done);
	if (!done)
		return 1;
	lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status)
			   : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1);
	return 2;
}

static int l_poll(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	int n = lupe_session__poll(s, (int)luaL_optinteger(L, 2, 100));

	if (n == -EINTR) {
		lua_pushinteger(L, 0);
		return 1;
	}
	if (n < 0)
		return lupe_push_errno(L, n, "poll");
	lua_pushinteger(L, n);
	return 1;
}

static int l_interrupted(lua_State *L)
{
	lua_pushboolean(L, lupe_session_interrupted());
	return 1;
}

static int l_install_signals(lua_State *L)
{
	lupe_session_install_signal_handlers();
	return 0;
}

static int l_set_frequency(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);

	return ok_or_errno(L, lupe_session__set_frequency(s, (unsigned int)luaL_checkinteger(L, 2)),
			   "set frequency");
}

static int l_frequency(lua_State *L)
{
	lua_pushinteger(L, lupe_session__frequency(check_session(L, 1)));
	return 1;
}

static int l_pause(lua_State *L)
{
	return ok_or_errno(L, lupe_session__pause(check_session(L, 1)), "pause");
}

static int l_resume(lua_State *L)
{
	return ok_or_errno(L, lupe_session__resume(check_session(L, 1)), "resume");
}

/* entries([interval_only]) -> { {trace=, pid=, comm=, count=, interval=}, ... } */
static int l_entries(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	bool interval_only = lua_toboolean(L, 2);
	const struct lupe_profile_entry *e;
	size_t n, i;
	int k = 0;

	e = lupe_session__entries(s, &n);
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		if (interval_only && e[i].interval == 0)
			continue;
		lua_createtable(L, 0, 5);
		lua_pushinteger(L, e[i].trace + 1);
		lua_setfield(L, -2, "trace");
		lua_pushinteger(L, e[i].pid);
		lua_setfield(L, -2, "pid");
		lua_pushlstring(L, e[i].comm, strnlen(e[i].comm, sizeof(e[i].comm)));
		lua_setfield(L, -2, "comm");
		lua_pushnumber(L, (lua_Number)e[i].count);
		lua_setfield(L, -2, "count");
		lua_pushnumber(L, (lua_Number)e[i].interval);
		lua_setfield(L, -2, "interval");
		lua_rawseti(L, -2, ++k);
	}
	return 1;
}

static const char *const kind_names[] = { "native", "kernel", "unknown", "error" };

/* trace(idx) -> { hash = "32 hex", frames = { {name=, module=, addr=, offset=, kind=}, ... } } */
static int l_trace(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	lua_Integer idx = luaL_checkinteger(L, 2);
	const struct lupe_sym_trace *t;
	char hex[LUPE_FILE_ID_HEX_LEN + 1];
	uint32_t i;

	t = idx >= 1 ? lupe_session__trace(s, (uint32_t)(idx - 1)) : NULL;
	if (!t)
		return luaL_argerror(L, 2, "no such trace");
	lua_createtable(L, 0, 2);
	lua_pushstring(L, lupe_file_id_format(t->hash, hex));
	lua_setfield(L, -2, "hash");
	lua_createtable(L, (int)t->nframes, 0);
	for (i = 0; i < t->nframes; i++) {
		const struct lupe_sym_frame *f = &t->frames[i];

		lua_createtable(L, 0, 5);
		if (f->name) {
			lua_pushstring(L, f->name);
			lua_setfield(L, -2, "name");
			lupe_push_u64(L, f->offset);
			lua_setfield(L, -2, "offset");
		}
		if (f->module) {
			lua_pushstring(L, f->module);
			lua_setfield(L, -2, "module");
		}
		lupe_push_u64(L, f->addr);
		lua_setfield(L, -2, "addr");
		lua_pushstring(L, kind_names[f->kind & 3]);
		lua_setfield(L, -2, "kind");
		lua_rawseti(L, -2, (int)i + 1);
	}
	lua_setfield(L, -2, "frames");
	return 1;
}

static int l_ntraces(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)lupe_session__ntraces(check_session(L, 1)));
	return 1;
}

static int l_interval_reset(lua_State *L)
{
	lupe_session__interval_reset(check_session(L, 1));
	return 0;
}

#define SET(field) (lua_pushnumber(L, (lua_Number)st.field), lua_setfield(L, -2, #field))
#define SET_PM(field) (lua_pushnumber(L, (lua_Number)st.pm.field), lua_setfield(L, -2, #field))

static int l_stats(lua_State *L)
{
	struct lupe_session_stats st;

	lupe_session__stats(check_session(L, 1), &st);
	lua_createtable(L, 0, 32);
	SET(samples_seen);
	SET(idle);
	SET(filtered);
	SET(emitted);
	SET(lost);
	SET(kernel_stack_err);
	SET(user_stack_err);
	SET(kernel_trunc);
	SET(user_trunc);
	SET(events_lost);
	SET(bpf_bad_records);
	SET(samples);
	SET(cache_hits);
	SET(cache_misses);
	SET(hash_collisions);
	SET(unknown_frames);
	SET(resyncs);
	SET(traces);
	SET(entries);
	SET(symbol_misses);
	SET(symbolize_errors);
	SET(exec_events);
	SET(exit_events);
	SET(new_pid_events);
	SET(ncpus);
	SET(unwind_samples);
	SET(unwind_frames);
	SET(fallback_frames);
	SET(no_table_frames);
	SET(unknown_pid_samples);
	SET(unwind_errors);
	SET(sync_requests);
	SET(exec_syncs);
	SET(raw_bytes);
	SET(raw_write_errors);
	SET(replay_errors);
	{
		/* Unwinding errors by reason, named as the error frames are. */
		static const char *const reasons[LUPE_UNWIND_NERR] = {
			"no_mapping", "no_delta", "invalid_rule", "read_fault", "too_deep",
			"zero_pc", "fp_chain",
		};
		int i;

		lua_createtable(L, 0, LUPE_UNWIND_NERR);
		for (i = 0; i < LUPE_UNWIND_NERR; i++) {
			lua_pushnumber(L, (lua_Number)st.unwind_err[i]);
			lua_setfield(L, -2, reasons[i]);
		}
		lua_setfield(L, -2, "unwind_err");
	}
	lua_createtable(L, 0, 8);
	lua_pushnumber(L, (lua_Number)st.deltas.files_resident);
	lua_setfield(L, -2, "files_resident");
	lua_pushnumber(L, (lua_Number)st.deltas.evictions);
	lua_setfield(L, -2, "evictions");
	lua_pushnumber(L, (lua_Number)st.deltas.no_room);
	lua_setfield(L, -2, "no_room");
	lua_pushnumber(L, (lua_Number)st.deltas.rejected);
	lua_setfield(L, -2, "rejected");
	lua_pushnumber(L, (lua_Number)st.deltas.bytes_used);
	lua_setfield(L, -2, "bytes_used");
	lua_pushnumber(L, (lua_Number)st.deltas.budget_bytes);
	lua_setfield(L, -2, "budget_bytes");
	lua_setfield(L, -2, "deltas");
	lua_createtable(L, 0, 16);
	SET_PM(sync_attempts);
	SET_PM(sync_esrch);
	SET_PM(sync_eperm);
	SET_PM(maps_malformed);
	SET_PM(file_open_errors);
	SET_PM(elf_errors);
	SET_PM(processes);
	SET_PM(exited_pending);
	SET_PM(executables);
	SET_PM(mappings);
	SET_PM(executables_loaded_total);
	SET_PM(memory_bytes);
	lua_setfield(L, -2, "procmgr");
	return 1;
}

/* Raw recording and replay (session.h). */
static int l_record_raw(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	const char *path = luaL_checkstring(L, 2);

	return ok_or_errno(L, lupe_session__record_raw(s, path),
			   lua_pushfstring(L, "cannot record to '%s'", path));
}

static int l_note(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);

	return ok_or_errno(L, lupe_session__note(s, luaL_checkstring(L, 2), luaL_checkstring(L, 3)),
			   "raw recording note");
}

static int l_replay_note(lua_State *L)
{
	const char *v = lupe_session__replay_note(check_session(L, 1), luaL_checkstring(L, 2));

	if (!v)
		return 0;
	lua_pushstring(L, v);
	return 1;
}

static int l_replaying(lua_State *L)
{
	lua_pushboolean(L, lupe_session__replaying(check_session(L, 1)));
	return 1;
}

/* The session's clock in seconds (a double keeps nanoseconds for ~100 days of uptime). */
static int l_clock(lua_State *L)
{
	lua_pushnumber(L, (lua_Number)lupe_session__clock(check_session(L, 1)) / 1e9);
	return 1;
}

static int l_clock_mark(lua_State *L)
{
	lua_pushnumber(L, (lua_Number)lupe_session__clock_mark(check_session(L, 1)) / 1e9);
	return 1;
}

static int l_mark_stop(lua_State *L)
{
	lupe_session__mark_stop(check_session(L, 1), (int)luaL_optinteger(L, 2, -1));
	return 0;
}

/* stopped, exit status (nil for none) */
static int l_replay_stopped(lua_State *L)
{
	int status = -1;
	bool stopped = lupe_session__replay_stopped(check_session(L, 1), &status);

	lua_pushboolean(L, stopped);
	if (!stopped || status < 0)
		return 1;
	lua_pushinteger(L, status);
	return 2;
}

static const luaL_Reg session_methods[] = {
	{ "record_raw", l_record_raw },
	{ "replaying", l_replaying },
	{ "note", l_note },
	{ "replay_note", l_replay_note },
	{ "clock", l_clock },
	{ "clock_mark", l_clock_mark },
	{ "mark_stop", l_mark_stop },
	{ "replay_stopped", l_replay_stopped },
	{ "target_system", l_target_system },
	{ "target_pids", l_target_pids },
	{ "target_cgroup", l_target_cgroup },
	{ "start_command", l_start_command },
	{ "command_done", l_command_done },
	{ "poll", l_poll },
	{ "set_frequency", l_set_frequency },
	{ "frequency", l_frequency },
	{ "pause", l_pause },
	{ "resume", l_resume },
	{ "entries", l_entries },
	{ "trace", l_trace },
	{ "interval_reset", l_interval_reset },
	{ "ntraces", l_ntraces },
	{ "stats", l_stats },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg session_funcs[] = {
	{ "new", l_new },
	{ "interrupted", l_interrupted },
	{ "install_signal_handlers", l_install_signals },
	{ NULL, NULL },
};

int luaopen_lupe_session(lua_State *L)
{
	luaL_newmetatable(L, SESSION_MT);
	lua_newtable(L);
	luaL_register(L, NULL, session_methods);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, l_close);
	lua_setfield(L, -2, "__gc");
	lua_pop(L, 1);
	lua_newtable(L);
	luaL_register(L, NULL, session_funcs);
	return 1;
}
