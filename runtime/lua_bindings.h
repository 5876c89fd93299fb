/* What one binding offers the others: the REPL shows the live session's process manager
 * with the same tables lupe.procmgr gives. Only runtime/lua_*.c include this. */
#ifndef LUPE_LUA_BINDINGS_H
#define LUPE_LUA_BINDINGS_H

#include <lua.h>

struct lupe_session;
struct lupe_procmgr;

/* The session of a lupe.session native object at idx (raises if it is not one, or closed).
 * lua_session.c */
struct lupe_session *lupe_lua_check_session(lua_State *L, int idx);

/* Push what pm:processes() and pm:mappings(pid) return (or nil, message, errno): lists of
 * {pid, exited} and of mappings, 64-bit values as 8-byte strings (lupe/u64.lua).
 * lua_procmgr.c */
int lupe_lua_push_processes(lua_State *L, struct lupe_procmgr *pm);
int lupe_lua_push_mappings(lua_State *L, struct lupe_procmgr *pm, int pid);

#endif
