/* lupe.native.apm: APM correlation from Lua. Pure helpers (encode, detect, parse_storage)
 * and the agent registry as a typed userdata, for tests and diagnostics; the per-sample
 * path never comes here.
 *
 * IDs cross as byte strings (trace_id 16 bytes, tx_id 8); a trace hash as {hi, lo} of
 * 64-bit values (8-byte strings or exact numbers), as lupe.procmgr gives it. */
#include "apm.h"
#include "log.h"
#include "lua_util.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#define APM_MT "lupe.apm"

struct lapm {
	struct lupe_apm *apm;
};

static struct lupe_apm *check_apm(lua_State *L, int idx)
{
	struct lapm *u = luaL_checkudata(L, idx, APM_MT);

	if (!u->apm)
		luaL_argerror(L, idx, "APM registry is closed");
	return u->apm;
}

static void check_bytes(lua_State *L, int idx, uint8_t *out, size_t n, const char *what)
{
	size_t len;
	const char *s = luaL_checklstring(L, idx, &len);

	if (len != n)
		luaL_argerror(L, idx, lua_pushfstring(L, "%s must be %d bytes, not %d", what,
						      (int)n, (int)len));
	memcpy(out, s, n);
}

static void check_hash(lua_State *L, int idx, struct lupe_file_id *id)
{
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_rawgeti(L, idx, 1);
	id->hi = lupe_check_u64(L, lua_gettop(L));
	lua_rawgeti(L, idx, 2);
	id->lo = lupe_check_u64(L, lua_gettop(L));
	lua_pop(L, 2);
}

static void check_ids(lua_State *L, int idx, struct lupe_apm_ids *ids)
{
	check_bytes(L, idx, ids->trace_id, sizeof(ids->trace_id), "trace_id");
	check_bytes(L, idx + 1, ids->tx_id, sizeof(ids->tx_id), "tx_id");
}

/* encode(trace_id, tx_id, {hi, lo}, count) -> the 46-byte message */
static int l_encode(lua_State *L)
{
	uint8_t msg[LUPE_APM_MSG_LEN];
	struct lupe_apm_ids ids;
	struct lupe_file_id hash;
	lua_Integer count;

	check_ids(L, 1, &ids);
	check_hash(L, 3, &hash);
	count = luaL_checkinteger(L, 4);
	luaL_argcheck(L, count >= 0 && count <= UINT16_MAX, 4, "count must fit 16 bits");
	lupe_apm_encode(msg, &ids, hash, (uint16_t)count);
	lua_pushlstring(L, (const char *)msg, sizeof(msg));
	return 1;
}

static void push_lib(lua_State *L, const struct lupe_apm_lib *lib)
{
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, lib->machine);
	lua_setfield(L, -2, "machine");
	lupe_push_u64(L, lib->storage_vaddr);
	lua_setfield(L, -2, "storage_vaddr");
	lupe_push_u64(L, lib->tlsdesc_vaddr);
	lua_setfield(L, -2, "tlsdesc_vaddr");
}

/* detect(path) -> {machine, storage_vaddr, tlsdesc_vaddr} | nil, msg, errno */
static int l_detect(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct lupe_apm_lib lib;
	int err = lupe_apm_detect(-1, path, &lib);

	if (err)
		return lupe_push_errno(L, err, lua_pushfstring(L, "detect '%s'", path));
	push_lib(L, &lib);
	return 1;
}

static void push_storage(lua_State *L, const struct lupe_apm_storage *s)
{
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, s->minor);
	lua_setfield(L, -2, "minor");
	lua_pushstring(L, s->service);
	lua_setfield(L, -2, "service");
	lua_pushstring(L, s->env);
	lua_setfield(L, -2, "env");
	lua_pushstring(L, s->socket);
	lua_setfield(L, -2, "socket");
}

/* parse_storage(bytes) -> {minor, service, env, socket} | nil, msg, errno */
static int l_parse_storage(lua_State *L)
{
	size_t len;
	const char *buf = luaL_checklstring(L, 1, &len);
	struct lupe_apm_storage s;
	int err = lupe_apm_parse_storage(buf, len, &s);

	if (err)
		return lupe_push_errno(L, err, "parse_storage");
	push_storage(L, &s);
	return 1;
}

/* path_matches(path) -> boolean */
static int l_path_matches(lua_State *L)
{
	lua_pushboolean(L, lupe_apm_path_matches(luaL_checkstring(L, 1)));
	return 1;
}

/* new{ proc_root=, no_openat2= } */
static int l_new(lua_State *L)
{
	LUPE_OPTS(lupe_apm_opts, opts);
	struct lapm *u;

	if (!lua_isnoneornil(L, 1)) {
		luaL_checktype(L, 1, LUA_TTABLE);
		lua_getfield(L, 1, "proc_root");
		opts.proc_root = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
		lua_getfield(L, 1, "no_openat2");
		opts.no_openat2 = lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	u = lua_newuserdata(L, sizeof(*u));
	u->apm = NULL;
	luaL_getmetatable(L, APM_MT);
	lua_setmetatable(L, -2);
	u->apm = lupe_apm__new(&opts);
	if (!u->apm)
		return lupe_push_errno(L, errno, "apm.new");
	return 1;
}

static int l_close(lua_State *L)
{
	struct lapm *u = luaL_checkudata(L, 1, APM_MT);

	lupe_apm__free(u->apm);
	u->apm = NULL;
	return 0;
}

static int l_tostring(lua_State *L)
{
	struct lapm *u = luaL_checkudata(L, 1, APM_MT);
	struct lupe_apm_stats st;

	if (!u->apm) {
		lua_pushstring(L, "lupe.apm (closed)");
		return 1;
	}
	lupe_apm__stats(u->apm, &st);
	lua_pushfstring(L, "lupe.apm (%d agents, %d pending)", (int)st.agents, (int)st.pending);
	return 1;
}

static int push_result(lua_State *L, int err, const char *what, int pid)
{
	if (err)
		return lupe_push_errno(L, err, lua_pushfstring(L, "%s pid %d", what, pid));
	lua_pushboolean(L, 1);
	return 1;
}

/* r:scan(pid) -> true | nil, msg, errno (EAGAIN: pending) */
static int l_scan(lua_State *L)
{
	struct lupe_apm *apm = check_apm(L, 1);
	int pid = luaL_checkint(L, 2);

	return push_result(L, lupe_apm__scan(apm, pid), "scan", pid);
}

/* r:attach(pid, lib_path, bias) -> true | nil, msg, errno */
static int l_attach(lua_State *L)
{
	struct lupe_apm *apm = check_apm(L, 1);
	int pid = luaL_checkint(L, 2);
	const char *path = luaL_checkstring(L, 3);
	uint64_t bias = lupe_check_u64(L, 4);
	struct lupe_apm_lib lib;
	int err = lupe_apm_detect(-1, path, &lib);

	if (err)
		return lupe_push_errno(L, err, lua_pushfstring(L, "detect '%s'", path));
	return push_result(L, lupe_apm__attach(apm, pid, &lib, bias), "attach", pid);
}

static int l_retry(lua_State *L)
{
	lua_pushinteger(L, lupe_apm__retry(check_apm(L, 1), (pid_t)luaL_optint(L, 2, 0)));
	return 1;
}

static int l_pid_exit(lua_State *L)
{
	lupe_apm__pid_exit(check_apm(L, 1), luaL_checkint(L, 2));
	return 0;
}

/* r:notify(pid, trace_id, tx_id, {hi, lo}, count) -> service | nil */
static int l_notify(lua_State *L)
{
	struct lupe_apm *apm = check_apm(L, 1);
	int pid = luaL_checkint(L, 2);
	struct lupe_apm_ids ids;
	struct lupe_file_id hash;
	lua_Integer count;
	const char *service;

	check_ids(L, 3, &ids);
	check_hash(L, 5, &hash);
	count = luaL_checkinteger(L, 6);
	luaL_argcheck(L, count >= 0 && count <= UINT32_MAX, 6, "count must fit 32 bits");
	service = lupe_apm__notify(apm, pid, &ids, hash, (uint32_t)count);
	if (service)
		lua_pushstring(L, service);
	else
		lua_pushnil(L);
	return 1;
}

/* r:agent(pid) -> {attached, tls_offset, bias, lib, storage, socket_open, socket_err} | nil */
static int l_agent(lua_State *L)
{
	struct lupe_apm *apm = check_apm(L, 1);
	struct lupe_apm_agent_info a;

	if (lupe_apm__agent_info(apm, luaL_checkint(L, 2), &a)) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, 0, 8);
	lua_pushinteger(L, a.pid);
	lua_setfield(L, -2, "pid");
	lua_pushboolean(L, a.attached);
	lua_setfield(L, -2, "attached");
	/* A static TLS offset is small: exact as a number. */
	lua_pushnumber(L, (lua_Number)a.tls_offset);
	lua_setfield(L, -2, "tls_offset");
	lupe_push_u64(L, a.bias);
	lua_setfield(L, -2, "bias");
	push_lib(L, &a.lib);
	lua_setfield(L, -2, "lib");
	push_storage(L, &a.storage);
	lua_setfield(L, -2, "storage");
	lua_pushboolean(L, a.socket_open);
	lua_setfield(L, -2, "socket_open");
	lua_pushinteger(L, -a.socket_err);
	lua_setfield(L, -2, "socket_errno");
	return 1;
}

#define SET_NUM(f) (lua_pushnumber(L, (lua_Number)st.f), lua_setfield(L, -2, #f))

static int l_stats(lua_State *L)
{
	struct lupe_apm_stats st;

	lupe_apm__stats(check_apm(L, 1), &st);
	lua_createtable(L, 0, 16);
	SET_NUM(libs_detected);
	SET_NUM(libs_rejected);
	SET_NUM(agents_found);
	SET_NUM(agents);
	SET_NUM(pending);
	SET_NUM(attach_errors);
	SET_NUM(storage_errors);
	SET_NUM(bpf_errors);
	SET_NUM(rejected_paths);
	SET_NUM(socket_errors);
	SET_NUM(sent);
	SET_NUM(dropped);
	SET_NUM(errors);
	SET_NUM(no_transaction);
	SET_NUM(no_socket);
	SET_NUM(services);
	return 1;
}

static const luaL_Reg apm_methods[] = {
	{ "scan", l_scan },
	{ "attach", l_attach },
	{ "retry", l_retry },
	{ "pid_exit", l_pid_exit },
	{ "notify", l_notify },
	{ "agent", l_agent },
	{ "stats", l_stats },
	{ "close", l_close },
	{ NULL, NULL },
};

static const luaL_Reg apm_funcs[] = {
	{ "new", l_new },
	{ "encode", l_encode },
	{ "detect", l_detect },
	{ "parse_storage", l_parse_storage },
	{ "path_matches", l_path_matches },
	{ NULL, NULL },
};

int luaopen_lupe_apm(lua_State *L)
{
	static const luaL_Reg meta[] = {
		{ "__gc", l_close }, { "__tostring", l_tostring }, { NULL, NULL } };

	lupe_lua_class(L, APM_MT, apm_methods, meta);
	lua_newtable(L);
	luaL_register(L, NULL, apm_funcs);
	lua_pushinteger(L, LUPE_APM_MSG_LEN);
	lua_setfield(L, -2, "MSG_LEN");
	return 1;
}
