/* LuaJIT state set-up for the lupe executable, and the one C->Lua call path. */
#ifndef LUPE_LUA_ENGINE_H
#define LUPE_LUA_ENGINE_H

#include <lua.h>

/* Creates a state with the standard libraries, `lupe.native` in package.preload, and package.path pointing at the stdlib under share_dir/lua.
 * share_dir is copied. Returns NULL and sets errno on failure. */
lua_State *lupe_engine_new(const char *share_dir);
void lupe_engine_free(lua_State *L);

/* Calls the function below nargs arguments with a traceback handler. On error, logs the
 * message and traceback once, leaves nothing on the stack and returns -EINVAL. */
int lupe_pcall(lua_State *L, int nargs, int nresults);

/* Loads path and runs it with `arg` = {[0]=path, argv...} and ... = argv. If the chunk
 * returns an integer, *status receives it (else 0): scripts choose their exit status.
 * Returns 0, -ENOENT/-EACCES (unreadable: logged as one line), or -EINVAL (syntax or
 * runtime error: logged with a traceback). */
int lupe_engine_run_file(lua_State *L, const char *path, int argc, char **argv, int *status);

/* What `lupe run` was asked beyond the script (options before SCRIPT). */
struct lupe_run_options {
	int watch;		/* --watch: reload the script on change and SIGHUP */
	const char *replay;	/* --replay FILE, or NULL; borrowed */
};

/* Publishes o as package.loaded["lupe.run_options"] = { watch = bool, replay = "FILE" or
 * nil }, so require "lupe.run_options" sees them. Strings are copied into the state. */
void lupe_engine_set_run_options(lua_State *L, const struct lupe_run_options *o);

/* Calls require(module)[func]({argv...}); an integer result goes to *status (else 0).
 * Returns 0 or -EINVAL (the error is logged with its traceback). */
int lupe_engine_run_module(lua_State *L, const char *module, const char *func, int argc,
			   char **argv, int *status);

/* luaopen for the aggregate native module; also the entry point of lupe/native.so. */
int luaopen_lupe_native(lua_State *L);

#endif
