/* Helpers shared by the bindings (only lua_*.c include this).
 * 64-bit values cross the C/Lua boundary as 8-byte strings in host order: exact (a double
 * loses kernel addresses), and lupe/u64.lua turns them into uint64_t cdata with one cast.
 * Numbers are accepted on input where they are exact. */
#ifndef LUPE_LUA_UTIL_H
#define LUPE_LUA_UTIL_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <string.h>

#include "log.h"

/* An expected runtime failure, the Lua way: nil, "what: strerror", errno. */
static inline int lupe_push_errno(lua_State *L, int err, const char *what)
{
	lua_pushnil(L);
	lua_pushfstring(L, "%s: %s", what, lupe_errstr(err));
	lua_pushinteger(L, err < 0 ? -err : err);
	return 3;
}

static inline void lupe_push_u64(lua_State *L, uint64_t v)
{
	lua_pushlstring(L, (const char *)&v, sizeof(v));
}

static inline uint64_t lupe_check_u64(lua_State *L, int idx)
{
	size_t len;
	uint64_t v;

	if (lua_type(L, idx) == LUA_TNUMBER) {
		lua_Number n = lua_tonumber(L, idx);

		if (n < 0 || n > 9007199254740992.0 || n != (lua_Number)(uint64_t)n)
			luaL_argerror(L, idx, "not an exact unsigned 64-bit value (use a uint64_t cdata)");
		return (uint64_t)n;
	}
	if (lua_type(L, idx) == LUA_TSTRING) {
		const char *s = lua_tolstring(L, idx, &len);

		if (len == sizeof(v)) {
			memcpy(&v, s, sizeof(v));
			return v;
		}
	}
	luaL_argerror(L, idx, "expected a 64-bit value");
	return 0;
}

/* Registers the metatable `name` of a userdata type, once per state: methods (may be NULL)
 * as its __index, and the metamethods in meta ({"__gc", f}, {"__tostring", g}, ...).
 * Leaves the stack as it was. */
static inline void lupe_lua_class(lua_State *L, const char *name, const luaL_Reg *methods,
				  const luaL_Reg *meta)
{
	if (luaL_newmetatable(L, name)) {
		if (methods) {
			lua_newtable(L);
			luaL_register(L, NULL, methods);
			lua_setfield(L, -2, "__index");
		}
		luaL_register(L, NULL, meta);
	}
	lua_pop(L, 1);
}

#endif
