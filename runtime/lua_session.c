/* lupe.native.session: a profiling session as a typed userdata. lupe/session.lua builds
 * the scripting surface (targets, hooks, run loop) on top of it. */
#include "log.h"
#include "lua_bindings.h"
#include "lua_util.h"
#include "session.h"
#include "tracer.h"

#include <linux/types.h>
#include "sampler.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
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

struct lupe_session *lupe_lua_check_session(lua_State *L, int idx)
{
	return check_session(L, idx);
}

static int ok_or_errno(lua_State *L, int err, const char *what)
{
	if (err < 0)
		return lupe_push_errno(L, err, what);
	lua_pushboolean(L, 1);
	return 1;
}

/* A frequency in Hz: an integer >= 1. 0 or a negative number would reach C as the default
 * (0) or as 4 billion Hz (the cast), so they are argument errors here. */
static unsigned int check_hz(lua_State *L, int idx, const char *what)
{
	lua_Number hz = luaL_checknumber(L, idx);

	if (!(hz >= 1) || hz > UINT_MAX)
		luaL_error(L, "%s: expected a frequency in Hz >= 1, got %f", what, (double)hz);
	return (unsigned int)hz;
}

static int l_new(lua_State *L)
{
	LUPE_OPTS(lupe_session_opts, opts);
	struct lsession *u;

	if (!lua_isnoneornil(L, 1)) {
		luaL_checktype(L, 1, LUA_TTABLE);
		lua_getfield(L, 1, "frequency");
		opts.frequency = lua_isnil(L, -1) ? 0 : check_hz(L, -1, "frequency");
		lua_getfield(L, 1, "kernel");
		opts.no_kernel = !lua_isnil(L, -1) && !lua_toboolean(L, -1);
		lua_getfield(L, 1, "filter_error_frames");
		opts.filter_error_frames = lua_toboolean(L, -1);
		/* unwind = false: frame-pointer user stacks instead of the native unwinder. */
		lua_getfield(L, 1, "unwind");
		opts.no_unwind = !lua_isnil(L, -1) && !lua_toboolean(L, -1);
		lua_pop(L, 4);
		lua_getfield(L, 1, "user");
		opts.no_user = !lua_isnil(L, -1) && !lua_toboolean(L, -1);
		lua_getfield(L, 1, "max_frames");
		opts.max_frames = lua_isnil(L, -1) ? 0 : (unsigned int)luaL_checkinteger(L, -1);
		if (opts.max_frames > LUPE_MAX_FRAMES)
			return luaL_error(L, "max_frames: at most %d", LUPE_MAX_FRAMES);
		/* offline: no BPF; samples come from inject() (tests, replay). */
		lua_getfield(L, 1, "offline");
		opts.offline = lua_toboolean(L, -1);
		lua_pop(L, 3);
		/* unwind_budget = bytes of BPF memory for delta tables (default 64 MiB). */
		lua_getfield(L, 1, "unwind_budget");
		opts.unwind_budget_bytes = lua_isnil(L, -1) ? 0 : (size_t)luaL_checknumber(L, -1);
		lua_pop(L, 1);
		/* max_entries = entries kept before exited processes' are folded (0: 16384). */
		lua_getfield(L, 1, "max_entries");
		if (!lua_isnil(L, -1)) {
			lua_Number m = luaL_checknumber(L, -1);

			if (!(m >= 0))
				return luaL_error(L, "max_entries: a number >= 0");
			opts.max_entries = m >= 0x1p53 ? SIZE_MAX : (size_t)m;
		}
		lua_pop(L, 1);
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

/* interrupted() -> true, signal number | false */
static int l_interrupted(lua_State *L)
{
	lua_pushboolean(L, lupe_session_interrupted());
	if (!lupe_session_interrupted())
		return 1;
	lua_pushinteger(L, lupe_session_interrupt_signal());
	return 2;
}

static int l_clear_interrupted(lua_State *L)
{
	lupe_session_clear_interrupted();
	return 0;
}

static int l_install_signals(lua_State *L)
{
	lupe_session_install_signal_handlers();
	return 0;
}

static int l_set_frequency(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);

	return ok_or_errno(L, lupe_session__set_frequency(s, check_hz(L, 2, "set_frequency")),
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
		if (e[i].service) {
			lua_pushstring(L, e[i].service);
			lua_setfield(L, -2, "service");
		}
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

static int l_reset(lua_State *L)
{
	int err = lupe_session__reset(check_session(L, 1));

	if (err)
		return lupe_push_errno(L, err, "reset");
	lua_pushboolean(L, 1);
	return 1;
}

#define SET(field) (lua_pushnumber(L, (lua_Number)st.field), lua_setfield(L, -2, #field))
#define SET_PM(field) (lua_pushnumber(L, (lua_Number)st.pm.field), lua_setfield(L, -2, #field))
static void set_num(lua_State *L, const char *k, uint64_t v)
{
	lua_pushnumber(L, (lua_Number)v);
	lua_setfield(L, -2, k);
}

/* stats.apm: APM correlation (see struct lupe_session_stats and lupe_apm_stats). */
static void push_apm_stats(lua_State *L, const struct lupe_session_stats *st)
{
	const struct lupe_apm_stats *a = &st->apm;

	lua_createtable(L, 0, 24);
	set_num(L, "samples", st->apm_samples);
	set_num(L, "notified", st->apm_notified);
	set_num(L, "tally_errors", st->apm_tally_errors);
	set_num(L, "bpf_read", st->apm_bpf.read);
	set_num(L, "bpf_no_tx", st->apm_bpf.no_tx);
	set_num(L, "bpf_faults", st->apm_bpf.faults);
	set_num(L, "libs_detected", a->libs_detected);
	set_num(L, "libs_rejected", a->libs_rejected);
	set_num(L, "agents_found", a->agents_found);
	set_num(L, "agents", a->agents);
	set_num(L, "pending", a->pending);
	set_num(L, "attach_errors", a->attach_errors);
	set_num(L, "storage_errors", a->storage_errors);
	set_num(L, "bpf_errors", a->bpf_errors);
	set_num(L, "rejected_paths", a->rejected_paths);
	set_num(L, "socket_errors", a->socket_errors);
	set_num(L, "sent", a->sent);
	set_num(L, "dropped", a->dropped);
	set_num(L, "errors", a->errors);
	set_num(L, "no_transaction", a->no_transaction);
	set_num(L, "no_socket", a->no_socket);
	set_num(L, "services", a->services);
	set_num(L, "sent_samples", a->sent_samples);
	set_num(L, "dropped_samples", a->dropped_samples);
	set_num(L, "error_samples", a->error_samples);
	set_num(L, "no_transaction_samples", a->no_transaction_samples);
	set_num(L, "no_socket_samples", a->no_socket_samples);
	lua_setfield(L, -2, "apm");
}

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
	SET(folded_entries);
	SET(folds);
	SET(resets);
	SET(aggregate_bytes);
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
	SET(rate_skipped);
	SET(window_skipped);
	SET(filter_dropped);
	SET(bpf_map_bytes);
	SET(proc_events_dropped);
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
	push_apm_stats(L, &st);
	return 1;
}

/* ---- zero-copy views for lupe/session.lua -----------------------------------------------
 * The FFI declarations of the C structs Lua reads in place, kept next to the asserts that
 * tie them to the C headers (a drifted field fails the build, not a script). */
static const char ffi_cdef[] =
	"struct lupe_profile_entry { uint32_t trace; int32_t pid; char comm[16];"
	" uint64_t count; uint64_t interval; uint64_t first_ktime, last_ktime;"
	" const char *service; };\n"
	"struct lupe_proc_event { uint32_t type; uint32_t pid; uint32_t ppid; int32_t exit_code;"
	" uint64_t ktime; char comm[16]; };\n";

_Static_assert(sizeof(pid_t) == 4 && sizeof(struct lupe_profile_entry) == 64 &&
	       offsetof(struct lupe_profile_entry, pid) == 4 &&
	       offsetof(struct lupe_profile_entry, comm) == 8 &&
	       offsetof(struct lupe_profile_entry, count) == 24 &&
	       offsetof(struct lupe_profile_entry, interval) == 32 &&
	       offsetof(struct lupe_profile_entry, first_ktime) == 40 &&
	       offsetof(struct lupe_profile_entry, last_ktime) == 48 &&
	       offsetof(struct lupe_profile_entry, service) == 56,
	       "ffi_cdef's struct lupe_profile_entry is out of step with session.h");
_Static_assert(sizeof(struct lupe_proc_event) == 40 &&
	       offsetof(struct lupe_proc_event, exit_code) == 12 &&
	       offsetof(struct lupe_proc_event, ktime) == 16 &&
	       offsetof(struct lupe_proc_event, comm) == 24,
	       "ffi_cdef's struct lupe_proc_event is out of step with sampler.h");

/* batch(flags) -> entries, index, n, dropped: two borrowed pointers (lightuserdata) to
 * the entry array and the batch's index array, valid until the next batch or poll. */
static int l_batch(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	unsigned int flags = 0;
	const uint32_t *idx;
	uint64_t dropped;
	size_t n, ne;
	int err;

	if (lua_toboolean(L, 2))
		flags |= LUPE_BATCH_INTERVAL;
	if (lua_toboolean(L, 3))
		flags |= LUPE_BATCH_VERDICTS;
	err = lupe_session__batch(s, flags, &idx, &n, &dropped);
	if (err)
		return lupe_push_errno(L, err, "batch");
	lua_pushlightuserdata(L, (void *)lupe_session__entries(s, &ne));
	lua_pushlightuserdata(L, (void *)idx);
	lua_pushinteger(L, (lua_Integer)n);
	lua_pushnumber(L, (lua_Number)dropped);
	return 4;
}

/* verdicts() -> entry verdicts, trace verdicts (uint8_t arrays, lightuserdata, writable,
 * valid until the next poll), nentries, ntraces, entries (borrowed likewise), the
 * session's relabel count (entry verdicts that read the service must be redone when it
 * moves) and its fold count (entries moved when it moves: verdicts moved with them) */
static int l_verdicts(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	uint8_t *ev, *tv;
	size_t ne;
	int err = lupe_session__verdicts(s, &ev, &tv);

	if (err)
		return lupe_push_errno(L, err, "verdicts");
	lupe_session__entries(s, &ne);
	lua_pushlightuserdata(L, ev);
	lua_pushlightuserdata(L, tv);
	lua_pushinteger(L, (lua_Integer)ne);
	lua_pushinteger(L, (lua_Integer)lupe_session__ntraces(s));
	lua_pushlightuserdata(L, (void *)lupe_session__entries(s, &ne));
	lua_pushnumber(L, (lua_Number)lupe_session__relabelled(s));
	lua_pushnumber(L, (lua_Number)lupe_session__folds(s));
	return 7;
}

static int l_want_events(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);

	return ok_or_errno(L, lupe_session__want_events(s, lua_toboolean(L, 2)), "process events");
}

/* events() -> pointer (lightuserdata, borrowed until the next poll), n */
static int l_events(lua_State *L)
{
	size_t n;
	const struct lupe_proc_event *ev = lupe_session__events(check_session(L, 1), &n);

	lua_pushlightuserdata(L, (void *)ev);
	lua_pushinteger(L, (lua_Integer)n);
	return 2;
}

/* A table of strings as a C array borrowing the table's strings. NULL: out of memory. */
static const char **string_list(lua_State *L, int idx, size_t *n)
{
	const char **v;
	size_t i;

	luaL_checktype(L, idx, LUA_TTABLE);
	*n = lua_objlen(L, idx);
	v = calloc(*n ? *n : 1, sizeof(*v));
	if (!v)
		return NULL;
	for (i = 0; i < *n; i++) {
		lua_rawgeti(L, idx, (int)i + 1);
		v[i] = lua_tostring(L, -1);
		lua_pop(L, 1);
		if (!v[i]) {
			free(v);
			luaL_argerror(L, idx, "expected strings");
		}
	}
	return v;
}

static int l_filter_comms(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	size_t n;
	const char **v = string_list(L, 2, &n);
	int err;

	if (!v)
		return lupe_push_errno(L, -ENOMEM, "comm filter");
	err = lupe_session__filter_comms(s, v, n);
	free(v);
	return ok_or_errno(L, err, "comm filter");
}

static int l_filter_cgroups(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	size_t n;
	const char **v = string_list(L, 2, &n);
	int err;

	if (!v)
		return lupe_push_errno(L, -ENOMEM, "cgroup filter");
	err = lupe_session__filter_cgroups(s, v, n);
	free(v);
	return ok_or_errno(L, err, "cgroup filter");
}

static unsigned int check_every(lua_State *L, int idx)
{
	lua_Integer every = luaL_checkinteger(L, idx);

	if (every < 0 || every > 1000000)
		luaL_argerror(L, idx, "keep one sample in N: N from 1 to 1000000, or 0 (no rate)");
	return (unsigned int)every;
}

static int l_rate_pid(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	lua_Integer pid = luaL_checkinteger(L, 2);

	if (pid <= 0)
		return luaL_argerror(L, 2, "not a pid");
	return ok_or_errno(L, lupe_session__rate_pid(s, (pid_t)pid, check_every(L, 3)), "pid rate");
}

static int l_rate_cgroup(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	const char *path = luaL_checkstring(L, 2);

	return ok_or_errno(L, lupe_session__rate_cgroup(s, path, check_every(L, 3)),
			   lua_pushfstring(L, "cgroup rate '%s'", path));
}

static int l_rate_default(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);

	return ok_or_errno(L, lupe_session__rate_default(s, check_every(L, 2)), "default rate");
}

/* window(period_seconds, fraction, seed): period 0 turns windows off */
static int l_window(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	lua_Number period = luaL_checknumber(L, 2), fraction = luaL_optnumber(L, 3, 1);
	lua_Number seed = luaL_optnumber(L, 4, 0);

	if (period < 0 || period > 3600)
		return luaL_argerror(L, 2, "period: 0 to 3600 seconds");
	if (!(fraction >= 0 && fraction <= 1))
		return luaL_argerror(L, 3, "fraction: 0 to 1");
	return ok_or_errno(L, lupe_session__window(s, (uint64_t)(period * 1e9), fraction,
						   (uint64_t)seed), "window");
}

static int l_target_add_pid(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	lua_Integer pid = luaL_checkinteger(L, 2);

	if (pid <= 0)
		return luaL_argerror(L, 2, "not a pid");
	return ok_or_errno(L, lupe_session__target_add_pid(s, (pid_t)pid, lua_toboolean(L, 3)),
			   "add target pid");
}

static int l_target_remove_pid(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	lua_Integer pid = luaL_checkinteger(L, 2);

	if (pid <= 0)
		return luaL_argerror(L, 2, "not a pid");
	return ok_or_errno(L, lupe_session__target_remove_pid(s, (pid_t)pid), "remove target pid");
}

/* inject(pid, comm, user_addrs [, kernel_addrs [, ktime]]): one synthetic sample into an
 * offline session, as if BPF had sent it (tests, benchmarks). */
static int l_inject(lua_State *L)
{
	struct lupe_session *s = check_session(L, 1);
	struct lupe_sample *smp;
	size_t nu, nk = 0, i, clen;
	const char *comm;

	/* A userdata: the argument checks below may raise, and the GC frees it then. It goes
	 * above the arguments, whose positions settop fixes. */
	lua_settop(L, 6);
	smp = lua_newuserdata(L, sizeof(*smp));
	memset(smp, 0, sizeof(*smp));
	smp->pid = smp->tid = (__u32)luaL_checkinteger(L, 2);
	comm = luaL_checklstring(L, 3, &clen);
	memcpy(smp->comm, comm, clen < LUPE_COMM_LEN - 1 ? clen : LUPE_COMM_LEN - 1);
	luaL_checktype(L, 4, LUA_TTABLE);
	nu = lua_objlen(L, 4);
	if (!lua_isnoneornil(L, 5)) {
		luaL_checktype(L, 5, LUA_TTABLE);
		nk = lua_objlen(L, 5);
	}
	if (nu + nk > LUPE_MAX_FRAMES)
		return luaL_argerror(L, 4, "too many frames");
	for (i = 0; i < nk; i++) {
		lua_rawgeti(L, 5, (int)i + 1);
		smp->frames[i] = lupe_check_u64(L, -1);
		lua_pop(L, 1);
	}
	for (i = 0; i < nu; i++) {
		lua_rawgeti(L, 4, (int)i + 1);
		smp->frames[nk + i] = lupe_check_u64(L, -1);
		lua_pop(L, 1);
	}
	smp->kernel_len = (__u16)nk;
	smp->user_len = (__u16)nu;
	smp->ktime = lua_isnoneornil(L, 6) ? 1 : lupe_check_u64(L, 6);
	return ok_or_errno(L, lupe_session__ingest_sample(s, smp), "inject");
}

/* inject_event(type, pid, ppid, comm [, ktime]): type "exec", "exit", "fork", "new" */
static int l_inject_event(lua_State *L)
{
	static const char *const types[] = { "exec", "exit", "fork", "new", NULL };
	static const __u32 codes[] = { LUPE_EV_EXEC, LUPE_EV_EXIT, LUPE_EV_FORK, LUPE_EV_NEW_PID };
	struct lupe_session *s = check_session(L, 1);
	struct lupe_proc_event ev = { 0 };
	const char *comm;
	size_t clen;

	ev.type = codes[luaL_checkoption(L, 2, NULL, types)];
	ev.pid = (__u32)luaL_checkinteger(L, 3);
	ev.ppid = (__u32)luaL_optinteger(L, 4, 0);
	comm = luaL_optlstring(L, 5, "", &clen);
	memcpy(ev.comm, comm, clen < LUPE_COMM_LEN - 1 ? clen : LUPE_COMM_LEN - 1);
	ev.ktime = lua_isnoneornil(L, 6) ? 1 : lupe_check_u64(L, 6);
	return ok_or_errno(L, lupe_session__ingest_event(s, &ev), "inject event");
}

static int l_window_open(lua_State *L)
{
	lua_pushboolean(L, lupe_tracer_window_open(lupe_check_u64(L, 1), lupe_check_u64(L, 2),
						   luaL_checknumber(L, 3), lupe_check_u64(L, 4)));
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
	{ "batch", l_batch },
	{ "verdicts", l_verdicts },
	{ "want_events", l_want_events },
	{ "events", l_events },
	{ "filter_comms", l_filter_comms },
	{ "filter_cgroups", l_filter_cgroups },
	{ "rate_pid", l_rate_pid },
	{ "rate_cgroup", l_rate_cgroup },
	{ "rate_default", l_rate_default },
	{ "window", l_window },
	{ "target_add_pid", l_target_add_pid },
	{ "target_remove_pid", l_target_remove_pid },
	{ "inject", l_inject },
	{ "inject_event", l_inject_event },
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
	{ "reset", l_reset },
	{ "ntraces", l_ntraces },
	{ "stats", l_stats },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg session_funcs[] = {
	{ "new", l_new },
	{ "interrupted", l_interrupted },
	{ "clear_interrupted", l_clear_interrupted },
	{ "install_signal_handlers", l_install_signals },
	{ "window_open", l_window_open },
	{ NULL, NULL },
};

int luaopen_lupe_session(lua_State *L)
{
	static const luaL_Reg meta[] = { { "__gc", l_close }, { NULL, NULL } };

	lupe_lua_class(L, SESSION_MT, session_methods, meta);
	lua_newtable(L);
	luaL_register(L, NULL, session_funcs);
	lua_pushstring(L, ffi_cdef);
	lua_setfield(L, -2, "cdef");
	return 1;
}
