/* lupe.native.procmgr: the process manager as a typed userdata. lupe/procmgr.lua wraps it
 * into the Lua-facing object (exact 64-bit values, file ID objects). */
#include "lua_bindings.h"
#include "lua_util.h"
#include "apm.h"
#include "convert.h"
#include "log.h"
#include "procmgr.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#define PROCMGR_MT "lupe.procmgr"

struct lprocmgr {
	struct lupe_procmgr *pm;
	struct lupe_apm *apm;   /* new{apm = true}: the manager's agent registry; owned */
};

static struct lupe_procmgr *check_procmgr(lua_State *L, int idx)
{
	struct lprocmgr *u = luaL_checkudata(L, idx, PROCMGR_MT);

	if (!u->pm)
		luaL_argerror(L, idx, "process manager is closed");
	return u->pm;
}


static void opt_field_bool(lua_State *L, int t, const char *k, bool *out)
{
	lua_getfield(L, t, k);
	if (!lua_isnil(L, -1))
		*out = lua_toboolean(L, -1);
	lua_pop(L, 1);
}

/* With new{apm = true}: a registry of APM agents fed by decorators around the recorder
 * and a reporter, so that synchronize finds agents and notify_apm reaches them. On failure
 * the handler and reporter made so far are freed, as the manager would. */
static int with_apm(struct lprocmgr *u, struct lupe_procmgr_opts *opts)
{
	LUPE_OPTS(lupe_apm_opts, aopts, .proc_root = opts->proc_root);

	u->apm = lupe_apm__new(&aopts);
	if (!u->apm)
		goto fail;
	opts->ebpf = lupe_apm_ebpf_new(u->apm, lupe_ebpf_recorder_new());
	if (!opts->ebpf)
		goto fail;
	opts->reporter = lupe_apm_reporter_new(u->apm, NULL);
	if (!opts->reporter)
		goto fail;
	return 0;
fail:
	if (opts->ebpf)
		opts->ebpf->ops->free(opts->ebpf);
	opts->ebpf = NULL;
	opts->file_ids->ops->free(opts->file_ids);
	opts->file_ids = NULL;
	return -ENOMEM;
}

/* new{ proc_root=, filter_error_frames=, file_ids = "lru"|"map", lru_size=, apm= } */
static int l_new(lua_State *L)
{
	LUPE_OPTS(lupe_procmgr_opts, opts);
	struct lprocmgr *u;
	const char *mapper = "lru";
	size_t lru_size = 0;
	bool apm = false;

	if (!lua_isnoneornil(L, 1)) {
		luaL_checktype(L, 1, LUA_TTABLE);
		lua_getfield(L, 1, "proc_root");
		opts.proc_root = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
		lua_getfield(L, 1, "file_ids");
		if (!lua_isnil(L, -1))
			mapper = luaL_checkstring(L, -1);
		lua_getfield(L, 1, "lru_size");
		lru_size = lua_isnil(L, -1) ? 0 : (size_t)luaL_checkinteger(L, -1);
		lua_pop(L, 1);
		opt_field_bool(L, 1, "filter_error_frames", &opts.filter_error_frames);
		opt_field_bool(L, 1, "apm", &apm);
	}
	if (strcmp(mapper, "map") == 0)
		opts.file_ids = lupe_fileid_mapper_new_map();
	else if (strcmp(mapper, "lru") == 0)
		opts.file_ids = lupe_fileid_mapper_new_lru(lru_size);
	else
		return luaL_error(L, "procmgr.new: file_ids must be \"lru\" or \"map\", not \"%s\"",
				  mapper);
	if (!opts.file_ids)
		return lupe_push_errno(L, errno, "procmgr.new");

	u = lua_newuserdata(L, sizeof(*u));
	u->pm = NULL;
	u->apm = NULL;
	luaL_getmetatable(L, PROCMGR_MT);
	lua_setmetatable(L, -2);
	if (apm && with_apm(u, &opts))
		return lupe_push_errno(L, ENOMEM, "procmgr.new");
	u->pm = lupe_procmgr__new(&opts);
	if (!u->pm)
		return lupe_push_errno(L, errno, "procmgr.new");
	lupe_procmgr__set_apm(u->pm, u->apm);
	return 1;
}

static int l_close(lua_State *L)
{
	struct lprocmgr *u = luaL_checkudata(L, 1, PROCMGR_MT);

	lupe_procmgr__free(u->pm);
	u->pm = NULL;
	lupe_apm__free(u->apm);   /* after the manager, which tells it of exits */
	u->apm = NULL;
	return 0;
}

static int l_tostring(lua_State *L)
{
	struct lprocmgr *u = luaL_checkudata(L, 1, PROCMGR_MT);
	struct lupe_procmgr_stats st;

	if (!u->pm) {
		lua_pushstring(L, "lupe.procmgr (closed)");
		return 1;
	}
	lupe_procmgr__stats(u->pm, &st);
	lua_pushfstring(L, "lupe.procmgr (%d processes, %d executables, %d mappings)",
			(int)st.processes, (int)st.executables, (int)st.mappings);
	return 1;
}

static int l_synchronize(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	int pid = luaL_checkint(L, 2);
	int err = lupe_procmgr__synchronize_process(pm, pid);

	if (err)
		return lupe_push_errno(L, err, lua_pushfstring(L, "synchronize pid %d", pid));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_pid_exit(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	int pid = luaL_checkint(L, 2);
	uint64_t ktime = lua_isnoneornil(L, 3) ? 0 : lupe_check_u64(L, 3);

	lua_pushboolean(L, lupe_procmgr__pid_exit(pm, pid, ktime));
	return 1;
}

static int l_cleanup_pids(lua_State *L)
{
	lua_pushinteger(L, lupe_procmgr__cleanup_pids(check_procmgr(L, 1)));
	return 1;
}

static int l_symbolization_complete(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);

	lua_pushinteger(L, lupe_procmgr__symbolization_complete(pm, lupe_check_u64(L, 2)));
	return 1;
}

static int l_ktime_now(lua_State *L)
{
	lupe_push_u64(L, lupe_ktime_now());
	return 1;
}

static void push_file_id(lua_State *L, struct lupe_file_id id)
{
	lua_createtable(L, 2, 0);
	lupe_push_u64(L, id.hi);
	lua_rawseti(L, -2, 1);
	lupe_push_u64(L, id.lo);
	lua_rawseti(L, -2, 2);
}

static void check_file_id(lua_State *L, int idx, struct lupe_file_id *id)
{
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_rawgeti(L, idx, 1);
	id->hi = lupe_check_u64(L, lua_gettop(L));
	lua_rawgeti(L, idx, 2);
	id->lo = lupe_check_u64(L, lua_gettop(L));
	lua_pop(L, 2);
}

#define SET_U64(field, value) (lupe_push_u64(L, (value)), lua_setfield(L, -2, field))

static void push_mapping(lua_State *L, const struct lupe_mapping *m, const char *path, bool deleted)
{
	lua_createtable(L, 0, 10);
	push_file_id(L, m->file_id);
	lua_setfield(L, -2, "file_id");
	SET_U64("vaddr", m->vaddr);
	SET_U64("length", m->length);
	SET_U64("bias", m->bias);
	SET_U64("file_offset", m->file_offset);
	SET_U64("device", m->device);
	SET_U64("inode", m->inode);
	lua_pushstring(L, path);
	lua_setfield(L, -2, "path");
	lua_pushboolean(L, deleted);
	lua_setfield(L, -2, "deleted");
}

int lupe_lua_push_mappings(lua_State *L, struct lupe_procmgr *pm, int pid)
{
	struct lupe_mapping_view *v;
	ssize_t n, i;

	n = lupe_procmgr__mappings(pm, pid, &v);
	if (n < 0)
		return lupe_push_errno(L, (int)n, lua_pushfstring(L, "mappings of pid %d", pid));
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		push_mapping(L, &v[i].m, v[i].path, v[i].deleted);
		lua_rawseti(L, -2, (int)i + 1);
	}
	free(v);
	return 1;
}

static int l_mappings(lua_State *L)
{
	return lupe_lua_push_mappings(L, check_procmgr(L, 1), luaL_checkint(L, 2));
}

static int l_find_mapping(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	int pid = luaL_checkint(L, 2);
	uint64_t addr = lupe_check_u64(L, 3);
	uint64_t ktime = lua_isnoneornil(L, 4) ? 0 : lupe_check_u64(L, 4);
	struct lupe_mapping m;
	char path[4096];

	if (lupe_procmgr__find_mapping(pm, pid, addr, ktime, &m, path, sizeof(path)))
		return 0;
	push_mapping(L, &m, path, false);
	return 1;
}

int lupe_lua_push_processes(lua_State *L, struct lupe_procmgr *pm)
{
	pid_t *pids;
	bool *exited;
	ssize_t n, i;

	n = lupe_procmgr__processes(pm, &pids, &exited);
	if (n < 0)
		return lupe_push_errno(L, (int)n, "processes");
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_createtable(L, 0, 2);
		lua_pushinteger(L, pids[i]);
		lua_setfield(L, -2, "pid");
		lua_pushboolean(L, exited[i]);
		lua_setfield(L, -2, "exited");
		lua_rawseti(L, -2, (int)i + 1);
	}
	free(pids);
	free(exited);
	return 1;
}

static int l_processes(lua_State *L)
{
	return lupe_lua_push_processes(L, check_procmgr(L, 1));
}

static int get_int_field(lua_State *L, int t, const char *k, int def)
{
	int v;

	lua_getfield(L, t, k);
	v = lua_isnil(L, -1) ? def : (int)luaL_checkinteger(L, -1);
	lua_pop(L, 1);
	return v;
}

/* add_synth_interval_data(host, { {address=, cfa_opcode=, cfa_param=, fp_opcode=,
 * fp_param=, flags=}, ... }) */
static int l_add_synth(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	uint64_t host = lupe_check_u64(L, 2);
	struct lupe_interval_data d = { 0 };
	size_t i;
	int err;

	luaL_checktype(L, 3, LUA_TTABLE);
	d.count = lua_objlen(L, 3);
	d.deltas = calloc(d.count ? d.count : 1, sizeof(*d.deltas));
	if (!d.deltas)
		return lupe_push_errno(L, -ENOMEM, "add_synth_interval_data");
	for (i = 0; i < d.count; i++) {
		struct lupe_stack_delta *sd = &d.deltas[i];
		int t;

		lua_rawgeti(L, 3, (int)i + 1);
		t = lua_gettop(L);
		if (!lua_istable(L, t)) {
			free(d.deltas);
			return luaL_argerror(L, 3, "each delta must be a table");
		}
		lua_getfield(L, t, "address");
		sd->address = lupe_check_u64(L, lua_gettop(L));
		lua_pop(L, 1);
		sd->cfa_opcode = (uint8_t)get_int_field(L, t, "cfa_opcode", 0);
		sd->cfa_param = get_int_field(L, t, "cfa_param", 0);
		sd->fp_opcode = (uint8_t)get_int_field(L, t, "fp_opcode", 0);
		sd->fp_param = get_int_field(L, t, "fp_param", 0);
		sd->flags = (uint8_t)get_int_field(L, t, "flags", 0);
		lua_pop(L, 1);
		if (i > 0 && sd->address < d.deltas[i - 1].address) {
			free(d.deltas);
			return luaL_argerror(L, 3, "deltas must be sorted by address");
		}
	}
	err = lupe_procmgr__add_synth_interval_data(pm, host, &d);
	free(d.deltas);
	if (err)
		return lupe_push_errno(L, err, "add_synth_interval_data");
	lua_pushboolean(L, 1);
	return 1;
}

static int l_file_id_get(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	struct lupe_file_id id;

	if (!lupe_procmgr__file_id(pm, lupe_check_u64(L, 2), &id))
		return 0;
	push_file_id(L, id);
	return 1;
}

static int l_file_id_set(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	uint64_t host = lupe_check_u64(L, 2);
	struct lupe_fileid_mapper *m = lupe_procmgr__file_id_mapper(pm);
	struct lupe_file_id id;
	int err;

	check_file_id(L, 3, &id);
	err = m->ops->set(m, host, id);
	if (err)
		return lupe_push_errno(L, err, "file_ids:set");
	lua_pushboolean(L, 1);
	return 1;
}

static int l_file_id_of_file(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct lupe_file_id id;
	FILE *f = fopen(path, "rb");
	int err;

	if (!f)
		return lupe_push_errno(L, errno, lua_pushfstring(L, "file id of '%s'", path));
	err = lupe_file_id_from_fd(fileno(f), &id);
	fclose(f);
	if (err)
		return lupe_push_errno(L, err, lua_pushfstring(L, "file id of '%s'", path));
	push_file_id(L, id);
	return 1;
}

static int l_exe_refcount(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);

	lua_pushinteger(L, lupe_procmgr__exe_refcount(pm, lupe_check_u64(L, 2)));
	return 1;
}

#define SET_NUM(field) (lua_pushnumber(L, (lua_Number)st.field), lua_setfield(L, -2, #field))

static int l_stats(lua_State *L)
{
	struct lupe_procmgr_stats st;

	lupe_procmgr__stats(check_procmgr(L, 1), &st);
	lua_createtable(L, 0, 24);
	SET_NUM(sync_attempts);
	SET_NUM(sync_esrch);
	SET_NUM(sync_eperm);
	SET_NUM(sync_empty);
	SET_NUM(maps_malformed);
	SET_NUM(file_open_errors);
	SET_NUM(elf_errors);
	SET_NUM(hash_errors);
	SET_NUM(delta_errors);
	SET_NUM(no_deltas);
	SET_NUM(ebpf_errors);
	SET_NUM(elf_cache_hits);
	SET_NUM(elf_cache_misses);
	SET_NUM(processes);
	SET_NUM(exited_pending);
	SET_NUM(executables);
	SET_NUM(mappings);
	SET_NUM(anon_regions);
	SET_NUM(executables_loaded_total);
	SET_NUM(executables_unloaded_total);
	SET_NUM(memory_bytes);
	return 1;
}

static const char *const call_names[] = {
	[LUPE_EBPF_NEW_PID] = "new_pid",
	[LUPE_EBPF_DELETE_PID] = "delete_pid",
	[LUPE_EBPF_ADD_MAPPING] = "add_mapping",
	[LUPE_EBPF_DELETE_MAPPING] = "delete_mapping",
	[LUPE_EBPF_LOAD_DELTAS] = "load_deltas",
	[LUPE_EBPF_UNLOAD_DELTAS] = "unload_deltas",
};

/* The recording fake's log: { {call=, pid=, host=, vaddr=, length=, bias=, ndeltas=}, ...}.
 * clear: true empties it after reading. */
static int l_ebpf_calls(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	struct lupe_ebpf_handler *h = lupe_procmgr__ebpf(pm);
	const struct lupe_ebpf_record *r;

	if (lupe_apm_ebpf_inner(h))
		h = lupe_apm_ebpf_inner(h);
	size_t n, i;

	if (!lupe_ebpf_handler_is_recorder(h))
		return luaL_error(L, "ebpf_calls: this manager writes real BPF maps, not a recorder");
	r = lupe_ebpf_recorder_records(h, &n);
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_createtable(L, 0, 7);
		lua_pushstring(L, call_names[r[i].call]);
		lua_setfield(L, -2, "call");
		lua_pushinteger(L, r[i].pid);
		lua_setfield(L, -2, "pid");
		SET_U64("host", r[i].host_file_id);
		SET_U64("vaddr", r[i].vaddr);
		SET_U64("length", r[i].length);
		SET_U64("bias", r[i].bias);
		lua_pushinteger(L, (lua_Integer)r[i].ndeltas);
		lua_setfield(L, -2, "ndeltas");
		lua_rawseti(L, -2, (int)i + 1);
	}
	if (lua_toboolean(L, 2))
		lupe_ebpf_recorder_clear(h);
	return 1;
}

static void raw_bytes(lua_State *L, int t, const char *k, uint8_t *out, size_t n)
{
	const char *v;
	size_t len;

	lua_getfield(L, t, k);
	v = lua_tolstring(L, -1, &len);
	if (!v || len != n)
		luaL_error(L, "notify_apm: raw.%s must be a string of %d bytes", k, (int)n);
	memcpy(out, v, n);
	lua_pop(L, 1);
}

/* pm:notify_apm({pid=, trace_id=16 bytes, tx_id=8 bytes}, {hi, lo}, count) -> service | nil
 * The reference's MaybeNotifyAPMAgent; see lupe_procmgr__notify_apm. */
static int l_notify_apm(lua_State *L)
{
	struct lupe_procmgr *pm = check_procmgr(L, 1);
	struct lupe_raw_trace raw = { 0 };
	struct lupe_apm_ids ids;
	struct lupe_file_id hash;
	lua_Integer count;
	const char *service;

	luaL_checktype(L, 2, LUA_TTABLE);
	lua_getfield(L, 2, "pid");
	raw.pid = (pid_t)luaL_checkint(L, -1);
	lua_pop(L, 1);
	raw_bytes(L, 2, "trace_id", ids.trace_id, sizeof(ids.trace_id));
	raw_bytes(L, 2, "tx_id", ids.tx_id, sizeof(ids.tx_id));
	raw.apm = &ids;
	check_file_id(L, 3, &hash);
	count = luaL_checkinteger(L, 4);
	luaL_argcheck(L, count >= 0 && count <= UINT32_MAX, 4, "count must fit 32 bits");
	service = lupe_procmgr__notify_apm(pm, &raw, hash, (uint32_t)count);
	if (service)
		lua_pushstring(L, service);
	else
		lua_pushnil(L);
	return 1;
}

/* pm:apm_stats() -> the registry's counters, or nil without one */
static int l_apm_stats(lua_State *L)
{
	struct lupe_apm *apm = lupe_procmgr__apm(check_procmgr(L, 1));
	struct lupe_apm_stats st;

	if (!apm) {
		lua_pushnil(L);
		return 1;
	}
	lupe_apm__stats(apm, &st);
	lua_createtable(L, 0, 16);
#define SET_APM(f) (lua_pushnumber(L, (lua_Number)st.f), lua_setfield(L, -2, #f))
	SET_APM(libs_detected);
	SET_APM(libs_rejected);
	SET_APM(agents_found);
	SET_APM(agents);
	SET_APM(pending);
	SET_APM(attach_errors);
	SET_APM(storage_errors);
	SET_APM(rejected_paths);
	SET_APM(socket_errors);
	SET_APM(sent);
	SET_APM(dropped);
	SET_APM(errors);
	SET_APM(no_transaction);
	SET_APM(no_socket);
	SET_APM(services);
	SET_APM(sent_samples);
	SET_APM(dropped_samples);
	SET_APM(error_samples);
	SET_APM(no_transaction_samples);
	SET_APM(no_socket_samples);
#undef SET_APM
	return 1;
}

static const luaL_Reg procmgr_methods[] = {
	{ "synchronize", l_synchronize },
	{ "pid_exit", l_pid_exit },
	{ "cleanup_pids", l_cleanup_pids },
	{ "symbolization_complete", l_symbolization_complete },
	{ "add_synth_interval_data", l_add_synth },
	{ "mappings", l_mappings },
	{ "find_mapping", l_find_mapping },
	{ "processes", l_processes },
	{ "file_id_get", l_file_id_get },
	{ "file_id_set", l_file_id_set },
	{ "exe_refcount", l_exe_refcount },
	{ "stats", l_stats },
	{ "ebpf_calls", l_ebpf_calls },
	{ "notify_apm", l_notify_apm },
	{ "apm_stats", l_apm_stats },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg procmgr_funcs[] = {
	{ "new", l_new },
	{ "ktime_now", l_ktime_now },
	{ "file_id_of_file", l_file_id_of_file },
	{ NULL, NULL },
};

int luaopen_lupe_procmgr(lua_State *L)
{
	static const luaL_Reg meta[] = {
		{ "__gc", l_close }, { "__tostring", l_tostring }, { NULL, NULL } };

	lupe_lua_class(L, PROCMGR_MT, procmgr_methods, meta);
	lua_newtable(L);
	luaL_register(L, NULL, procmgr_funcs);
	return 1;
}
