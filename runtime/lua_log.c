/* lupe.native.log: the log sink seen from Lua, so scripts and C share one stderr. */
#include "log.h"

#include <lauxlib.h>
#include <lua.h>

static const char *const level_names[] = { "error", "warn", "info", "debug", NULL };

static int l_log(lua_State *L)
{
	int level = luaL_checkoption(L, 1, NULL, level_names);
	const char *msg = luaL_checkstring(L, 2);

	lupe_log(level, "%s", msg);
	return 0;
}

static int l_set_level(lua_State *L)
{
	lupe_log_set_level(luaL_checkoption(L, 1, NULL, level_names));
	return 0;
}

static int l_level(lua_State *L)
{
	lua_pushstring(L, level_names[lupe_log_get_level()]);
	return 1;
}

static const luaL_Reg log_funcs[] = {
	{ "log", l_log },
	{ "set_level", l_set_level },
	{ "level", l_level },
	{ NULL, NULL },
};

int luaopen_lupe_log(lua_State *L)
{
	lua_newtable(L);
	luaL_register(L, NULL, log_funcs);
	return 1;
}
