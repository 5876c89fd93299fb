#define LUPE_LOG_PREFIX ""
#include "lua_engine.h"
#include "log.h"
#include "lupe.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int luaopen_lupe_codec(lua_State *L);
int luaopen_lupe_apm(lua_State *L);
int luaopen_lupe_log(lua_State *L);
int luaopen_lupe_procmgr(lua_State *L);
int luaopen_lupe_ehframe(lua_State *L);
int luaopen_lupe_session(lua_State *L);
int luaopen_lupe_repl(lua_State *L);

/* Opening every submodule is cheap (functions and metatables only), and one table works
 * the same inside the executable and in native.so: native.log, native.procmgr, ... */
static const luaL_Reg native_modules[] = {
	{ "codec", luaopen_lupe_codec },
	{ "apm", luaopen_lupe_apm },
	{ "log", luaopen_lupe_log },
	{ "procmgr", luaopen_lupe_procmgr },
	{ "ehframe", luaopen_lupe_ehframe },
	{ "session", luaopen_lupe_session },
	{ "repl", luaopen_lupe_repl },
	{ NULL, NULL },
};

int luaopen_lupe_native(lua_State *L)
{
	const luaL_Reg *m;

	lua_newtable(L);
	for (m = native_modules; m->name; m++) {
		lua_pushcfunction(L, m->func);
		if (lupe_pcall(L, 0, 1) != 0)
			return luaL_error(L, "lupe.native: cannot open '%s'", m->name);
		lua_setfield(L, -2, m->name);
	}
	lua_pushstring(L, LUPE_VERSION);
	lua_setfield(L, -2, "version");
	return 1;
}

static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);

	if (!msg) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			msg = lua_tostring(L, -1);
		else
			msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

int lupe_pcall(lua_State *L, int nargs, int nresults)
{
	int base = lua_gettop(L) - nargs;
	int rc;

	lua_pushcfunction(L, traceback);
	lua_insert(L, base);
	rc = lua_pcall(L, nargs, nresults, base);
	if (rc != 0) {
		pr_err("%s", lua_tostring(L, -1));
		lua_settop(L, base - 1);
		return -EINVAL;
	}
	lua_remove(L, base);
	return 0;
}

lua_State *lupe_engine_new(const char *share_dir)
{
	lua_State *L = luaL_newstate();

	if (!L) {
		errno = ENOMEM;
		return NULL;
	}
	luaL_openlibs(L);

	/* package.path: the stdlib first, then LuaJIT's defaults (user modules, lpeg). */
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "path");
	lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", share_dir, share_dir,
			lua_tostring(L, -1));
	lua_setfield(L, -3, "path");
	lua_pop(L, 1);
	lua_getfield(L, -1, "preload");
	lua_pushcfunction(L, luaopen_lupe_native);
	lua_setfield(L, -2, "lupe.native");
	lua_pop(L, 2);

	lua_pushstring(L, share_dir);
	lua_setfield(L, LUA_REGISTRYINDEX, "lupe.share_dir");
	return L;
}

void lupe_engine_free(lua_State *L)
{
	if (L)
		lua_close(L);
}

int lupe_engine_run_file(lua_State *L, const char *path, int argc, char **argv, int *status)
{
	FILE *f;
	int i, rc;

	*status = 0;
	f = fopen(path, "r");
	if (!f) {
		rc = -errno;
		pr_err("cannot open script '%s': %s", path, lupe_errstr(rc));
		return rc;
	}
	fclose(f);

	lua_createtable(L, argc, 1);
	lua_pushstring(L, path);
	lua_rawseti(L, -2, 0);
	for (i = 0; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i + 1);
	}
	lua_setglobal(L, "arg");

	if (luaL_loadfile(L, path) != 0) {
		pr_err("%s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return -EINVAL;
	}
	for (i = 0; i < argc; i++)
		lua_pushstring(L, argv[i]);
	rc = lupe_pcall(L, argc, 1);
	if (rc == 0) {
		if (lua_type(L, -1) == LUA_TNUMBER)
			*status = (int)lua_tointeger(L, -1);
		lua_pop(L, 1);
	}
	return rc;
}

void lupe_engine_set_run_options(lua_State *L, const struct lupe_run_options *o)
{
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "loaded");
	lua_createtable(L, 0, 2);
	lua_pushboolean(L, o->watch);
	lua_setfield(L, -2, "watch");
	if (o->replay) {
		lua_pushstring(L, o->replay);
		lua_setfield(L, -2, "replay");
	}
	lua_setfield(L, -2, "lupe.run_options");
	lua_pop(L, 2);
}

int lupe_engine_run_module(lua_State *L, const char *module, const char *func, int argc,
			   char **argv, int *status)
{
	int i, rc;

	*status = 0;
	lua_getglobal(L, "require");
	lua_pushstring(L, module);
	rc = lupe_pcall(L, 1, 1);
	if (rc != 0)
		return rc;
	lua_getfield(L, -1, func);
	lua_remove(L, -2);
	if (!lua_isfunction(L, -1)) {
		pr_err("module '%s' has no function '%s'", module, func);
		lua_pop(L, 1);
		return -EINVAL;
	}
	lua_createtable(L, argc, 0);
	for (i = 0; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i + 1);
	}
	rc = lupe_pcall(L, 1, 1);
	if (rc == 0) {
		if (lua_type(L, -1) == LUA_TNUMBER)
			*status = (int)lua_tointeger(L, -1);
		lua_pop(L, 1);
	}
	return rc;
}
