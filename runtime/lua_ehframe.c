/* lupe.native.ehframe: the stack deltas of an ELF file as Lua tables, for `lupe deltas`
 * and tests. Not for the sampling path: one table per delta. */
#include "ehframe.h"
#include "log.h"
#include "lua_util.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <unistd.h>

#define BUF_MT "lupe.ehframe.buf"

/* Holds the C array while tables are built, so a Lua error (out of memory) frees it. */
struct lbuf {
	struct lupe_stack_delta *deltas;
};

static int buf_gc(lua_State *L)
{
	struct lbuf *b = luaL_checkudata(L, 1, BUF_MT);

	free(b->deltas);
	b->deltas = NULL;
	return 0;
}

static const char *what_failed(int err)
{
	switch (err) {
	case -ENOENT: return "no call-frame information (.eh_frame, .debug_frame)";
	case -ENOEXEC: return "not an x86-64 ELF executable or shared object";
	case -EINVAL: return "malformed call-frame information";
	default: return lupe_errstr(err);
	}
}

static void opt_bool(lua_State *L, int t, const char *k, bool *out)
{
	lua_getfield(L, t, k);
	if (!lua_isnil(L, -1))
		*out = lua_toboolean(L, -1);
	lua_pop(L, 1);
}

static void set_count(lua_State *L, const char *k, uint64_t v)
{
	lua_pushnumber(L, (lua_Number)v);
	lua_setfield(L, -2, k);
}

static void push_stats(lua_State *L, const struct lupe_ehframe_stats *st)
{
	luaL_Buffer b;

	lua_createtable(L, 0, 18);
	set_count(L, "cies", st->cies);
	set_count(L, "fdes", st->fdes);
	set_count(L, "bad_cies", st->bad_cies);
	set_count(L, "bad_fdes", st->bad_fdes);
	set_count(L, "unsupported_exprs", st->unsupported_exprs);
	set_count(L, "unsupported_rules", st->unsupported_rules);
	set_count(L, "signal_fdes", st->signal_fdes);
	set_count(L, "stop_fdes", st->stop_fdes);
	set_count(L, "plt_fdes", st->plt_fdes);
	set_count(L, "empty_fdes", st->empty_fdes);
	set_count(L, "outside_fdes", st->outside_fdes);
	set_count(L, "overlapping_fdes", st->overlapping_fdes);
	set_count(L, "hdr_fallbacks", st->hdr_fallbacks);
	set_count(L, "deltas_raw", st->deltas_raw);
	set_count(L, "deltas", st->deltas);
	set_count(L, "bytes", st->deltas * sizeof(struct lupe_stack_delta));
	/* "eh_frame+hdr+debug_frame": which sources were read. */
	luaL_buffinit(L, &b);
	if (st->sources & LUPE_EHFRAME_SRC_EH_FRAME)
		luaL_addstring(&b, "eh_frame");
	if (st->sources & LUPE_EHFRAME_SRC_HDR_TABLE)
		luaL_addstring(&b, "+hdr");
	if (st->sources & LUPE_EHFRAME_SRC_PT_GNU_EH)
		luaL_addstring(&b, "+pt_gnu_eh_frame");
	if (st->sources & LUPE_EHFRAME_SRC_DEBUG_FRAME)
		luaL_addstring(&b, st->sources & LUPE_EHFRAME_SRC_EH_FRAME ? "+debug_frame"
									    : "debug_frame");
	luaL_pushresult(&b);
	lua_setfield(L, -2, "sources");
}

/* extract(path [, { no_eh_frame_hdr =, no_eh_frame =, no_debug_frame = }])
 *   -> deltas, stats          deltas[i] = { address = 8-byte string, cfa = "rsp+8",
 *                                           fp = "cfa-16" } or { address =, cmd = "stop" }
 *   -> nil, message, errno    the file cannot be opened or holds no usable CFI */
static int l_extract(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	LUPE_OPTS(lupe_ehframe_opts, opts);
	struct lupe_interval_data data;
	struct lupe_ehframe_stats st;
	const char *cmd;
	struct lbuf *b;
	char text[32];
	size_t i;
	int fd, rc;

	if (!lua_isnoneornil(L, 2)) {
		luaL_checktype(L, 2, LUA_TTABLE);
		opt_bool(L, 2, "no_eh_frame_hdr", &opts.no_eh_frame_hdr);
		opt_bool(L, 2, "no_eh_frame", &opts.no_eh_frame);
		opt_bool(L, 2, "no_debug_frame", &opts.no_debug_frame);
	}
	b = lua_newuserdata(L, sizeof(*b));
	b->deltas = NULL;
	luaL_getmetatable(L, BUF_MT);
	lua_setmetatable(L, -2);

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		lua_pushnil(L);
		lua_pushfstring(L, "%s: %s", path, lupe_errstr(rc));
		lua_pushinteger(L, -rc);
		return 3;
	}
	rc = lupe_ehframe_extract_fd(fd, &opts, &data, &st);
	close(fd);
	if (rc) {
		lua_pushnil(L);
		lua_pushfstring(L, "%s: %s", path, what_failed(rc));
		lua_pushinteger(L, -rc);
		return 3;
	}
	b->deltas = data.deltas;

	lua_createtable(L, (int)data.count, 0);
	for (i = 0; i < data.count; i++) {
		const struct lupe_stack_delta *d = &data.deltas[i];

		lua_createtable(L, 0, 3);
		lupe_push_u64(L, d->address);
		lua_setfield(L, -2, "address");
		if (lupe_ehframe_is_cmd(d, &cmd)) {
			lua_pushstring(L, cmd);
			lua_setfield(L, -2, "cmd");
		} else {
			lua_pushstring(L, lupe_ehframe_format_cfa(d, text, sizeof(text)));
			lua_setfield(L, -2, "cfa");
			lua_pushstring(L, lupe_ehframe_format_fp(d, text, sizeof(text)));
			lua_setfield(L, -2, "fp");
		}
		lua_rawseti(L, -2, (int)i + 1);
	}
	free(b->deltas);
	b->deltas = NULL;
	push_stats(L, &st);
	return 2;
}

static const luaL_Reg funcs[] = {
	{ "extract", l_extract },
	{ NULL, NULL },
};

int luaopen_lupe_ehframe(lua_State *L)
{
	static const luaL_Reg meta[] = { { "__gc", buf_gc }, { NULL, NULL } };

	lupe_lua_class(L, BUF_MT, NULL, meta);
	lua_newtable(L);
	luaL_register(L, NULL, funcs);
	return 1;
}
