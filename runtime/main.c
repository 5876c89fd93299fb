/* The lupe command line: built-in commands, and every scripts/NAME.lua as `lupe NAME`. */
#include "cli_trust.h"
#include "log.h"
#include "lua_engine.h"
#include "lupe.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: lupe [-v|-vv] COMMAND [ARGS...]\n"
	"\n"
	"lupe is a whole-system sampling profiler whose policy is written in Lua.\n"
	"\n"
	"Built-in commands:\n"
	"  run SCRIPT.lua [ARGS...]  run a Lua script; require \"lupe\" gives the profiler API\n"
	"  repl                      a Lua prompt on a live profiling session\n"
	"  version                   print the version\n"
	"  help [COMMAND]            this text, or a command's own help\n"
	"\n"
	"Options:\n"
	"  -v, -vv                   more log output (info, debug), on stderr\n"
	"  --version                 print the version\n"
	"  -h, --help                this text\n"
	"\n"
	"Environment:\n"
	"  LUPE_PATH                 directory holding lua/ (the stdlib) and scripts/;\n"
	"                            default: next to the executable, or PREFIX/" LUPE_SHARE_REL "\n"
	"\n"
	"As root, lupe refuses (exit 2) a script, a scripts/ command or a LUPE_PATH file that\n"
	"is not owned by root or is writable by group or other: running it would give root\n"
	"to whoever can write it.\n";

static const char run_usage[] =
	"usage: lupe run [--watch] [--replay FILE] SCRIPT.lua [ARGS...]\n"
	"\n"
	"Runs SCRIPT.lua in LuaJIT with the lupe stdlib. `arg` holds the arguments\n"
	"(arg[0] is the script) and so does `...`. require \"lupe\" and require \"lpeg\" work.\n"
	"A script error prints the message with a traceback and exits 1.\n"
	"\n"
	"Options (before SCRIPT; require \"lupe.run_options\" gives {watch=, replay=}):\n"
	"  --watch         reload SCRIPT when the file changes or on SIGHUP, keeping the live\n"
	"                  session: its lupe.session{...} returns the running session (frequency\n"
	"                  applied, hooks and filter replaced by the new script's), samples,\n"
	"                  process table and caches survive. A script that fails to load keeps\n"
	"                  the old one running and prints the error.\n"
	"  --replay FILE   published to the script as run_options.replay: every session the\n"
	"                  script starts reads the recorded samples from FILE instead of\n"
	"                  sampling live (no BPF, no root needed)\n"
	"\n"
	"As root, SCRIPT must be owned by root and not writable by group or other (exit 2).\n";

static const char repl_usage[] =
	"usage: lupe repl [--no-session] [-F HZ] [-p PID...]\n"
	"\n"
	"A Lua prompt with line editing, history (~/.lupe_history) and Tab completion of\n"
	"names (lupe.se<Tab>). A session samples in the background (the whole system, or\n"
	"the -p PIDs) while the prompt waits; `s` is the session. Helpers:\n"
	"  ps()  maps(pid)  top(n)  flame(\"out.svg\")  freq(hz)  filter(\"expr\")  stats()\n"
	"  pause()  resume()  help()\n"
	"Results are printed (tables one level deep). Ctrl-C clears the line or stops the\n"
	"running command, Ctrl-D exits.\n"
	"\n"
	"  --no-session    no session (no BPF, no root needed): a plain Lua prompt\n"
	"  -F HZ           sampling frequency per CPU (default 99)\n"
	"  -p PID...       sample only these processes (repeat -p or list them)\n";

static int is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* <exe>/share/lupe in the build tree, <exe>/../share/lupe once installed. */
static int find_share_dir(char *out, size_t len)
{
	char exe[PATH_MAX], probe[PATH_MAX + 64];
	const char *env = getenv("LUPE_PATH");
	ssize_t n;
	char *slash;

	if (env && *env) {
		snprintf(out, len, "%s", env);
		return 0;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		return -errno;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	snprintf(probe, sizeof(probe), "%s/share/lupe/lua", exe);
	if (is_dir(probe)) {
		snprintf(out, len, "%s/share/lupe", exe);
		return 0;
	}
	snprintf(out, len, "%s/../%s", exe, LUPE_SHARE_REL);
	return 0;
}

static const char *script_description(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	const char *d = "";

	if (!f)
		return d;
	if (fgets(buf, len, f) && strncmp(buf, "-- ", 3) == 0) {
		buf[strcspn(buf, "\n")] = '\0';
		d = buf + 3;
	}
	fclose(f);
	return d;
}

static void list_script_commands(const char *share_dir)
{
	char dir[PATH_MAX], path[PATH_MAX * 2], desc[256];
	struct dirent **ents;
	int i, n;

	snprintf(dir, sizeof(dir), "%s/scripts", share_dir);
	n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0)
		return;
	printf("\nScript commands (%s):\n", dir);
	for (i = 0; i < n; i++) {
		size_t l = strlen(ents[i]->d_name);

		if (l > 4 && strcmp(ents[i]->d_name + l - 4, ".lua") == 0) {
			snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
			printf("  %-24.*s  %s\n", (int)(l - 4), ents[i]->d_name,
			       script_description(path, desc, sizeof(desc)));
		}
		free(ents[i]);
	}
	free(ents);
	printf("Run `lupe COMMAND --help` for a command's options.\n");
}

/* As root: 0 when the script (NULL: none) and whatever LUPE_PATH would make lupe load
 * are root's alone; else logs why and returns -EPERM (or the errno of a failed check). */
static int check_trust(const char *script)
{
	const char *env = getenv("LUPE_PATH");
	char why[PATH_MAX + 128], dir[PATH_MAX];
	int err = 0;

	if (geteuid() != 0)
		return 0;
	if (script && access(script, F_OK) == 0)
		err = lupe_cli_check_trusted(script, why, sizeof(why));
	if (!err && env && *env) {
		snprintf(dir, sizeof(dir), "%s/lua", env);
		err = lupe_cli_check_trusted_tree(dir, why, sizeof(why));
		if (!err) {
			snprintf(dir, sizeof(dir), "%s/scripts", env);
			err = lupe_cli_check_trusted_tree(dir, why, sizeof(why));
		}
	}
	if (err)
		pr_err("refusing to run as root: %s (chown root and chmod go-w it)", why);
	return err;
}

/* Missing scripts fall through to the engine, which reports them as before. */
static int run_script(const char *share_dir, const char *path, int argc, char **argv,
		      const struct lupe_run_options *opts)
{
	static const struct lupe_run_options none;
	lua_State *L;
	int err, status;

	if (check_trust(path))
		return 2;
	L = lupe_engine_new(share_dir);
	if (!L) {
		pr_err("cannot create the Lua state: %s", lupe_errstr(errno));
		return 1;
	}
	lupe_engine_set_run_options(L, opts ? opts : &none);
	if (opts && opts->watch) {
		/* lupe.watch loads the script itself: argv[-1] is the script (argv follows
		 * "run [options] SCRIPT" in main's argv). */
		err = lupe_engine_run_module(L, "lupe.watch", "main", argc + 1, argv - 1, &status);
	} else {
		err = lupe_engine_run_file(L, path, argc, argv, &status);
	}
	lupe_engine_free(L);
	return err ? 1 : status;
}

/* lupe run [--watch] [--replay FILE] [--] SCRIPT [ARGS]; argv[0] is "run". */
static int cmd_run(const char *share_dir, int argc, char **argv)
{
	struct lupe_run_options opts = { 0 };
	int i;

	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(run_usage, stdout);
			return 0;
		} else if (strcmp(argv[i], "--watch") == 0) {
			opts.watch = 1;
		} else if (strcmp(argv[i], "--replay") == 0) {
			if (i + 1 >= argc) {
				pr_err("run: --replay needs a FILE (see lupe run --help)");
				return 2;
			}
			opts.replay = argv[++i];
		} else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else {
			pr_err("run: unknown option '%s' (see lupe run --help)", argv[i]);
			return 2;
		}
	}
	if (i >= argc) {
		pr_err("run: missing SCRIPT (see lupe run --help)");
		return 2;
	}
	return run_script(share_dir, argv[i], argc - i - 1, argv + i + 1, &opts);
}

/* lupe repl [...]: options are parsed by lupe/repl.lua; argv[0] is "repl". */
static int cmd_repl(const char *share_dir, int argc, char **argv)
{
	lua_State *L;
	int err, status, i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(repl_usage, stdout);
			return 0;
		}
	}
	if (check_trust(NULL))
		return 2;
	L = lupe_engine_new(share_dir);
	if (!L) {
		pr_err("cannot create the Lua state: %s", lupe_errstr(errno));
		return 1;
	}
	err = lupe_engine_run_module(L, "lupe.repl", "main", argc - 1, argv + 1, &status);
	lupe_engine_free(L);
	return err ? 1 : status;
}

int main(int argc, char **argv)
{
	char share_dir[PATH_MAX], script[PATH_MAX * 2];
	const char *cmd;
	int i = 1;

	lupe_log_attach_libbpf();
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-v") == 0) {
			lupe_log_set_level(LUPE_LOG_INFO);
		} else if (strcmp(argv[i], "-vv") == 0) {
			lupe_log_set_level(LUPE_LOG_DEBUG);
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			break;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("lupe %s\n", LUPE_VERSION);
			return 0;
		} else {
			pr_err("unknown option '%s' (see lupe --help)", argv[i]);
			return 2;
		}
	}
	if (find_share_dir(share_dir, sizeof(share_dir)) < 0) {
		pr_err("cannot locate the executable: %s", lupe_errstr(errno));
		return 1;
	}

	cmd = i < argc ? argv[i] : NULL;
	if (!cmd || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 ||
	    (strcmp(cmd, "help") == 0 && i + 1 >= argc)) {
		fputs(usage_text, stdout);
		list_script_commands(share_dir);
		return cmd ? 0 : 2;
	}
	if (strcmp(cmd, "help") == 0) {
		/* `lupe help X` is `lupe X --help`. */
		argv[i] = argv[i + 1];
		argv[i + 1] = "--help";
		cmd = argv[i];
	}
	if (strcmp(cmd, "version") == 0) {
		printf("lupe %s\n", LUPE_VERSION);
		return 0;
	}
	if (strcmp(cmd, "run") == 0)
		return cmd_run(share_dir, argc - i, argv + i);
	if (strcmp(cmd, "repl") == 0)
		return cmd_repl(share_dir, argc - i, argv + i);

	if (strchr(cmd, '/') == NULL) {
		snprintf(script, sizeof(script), "%s/scripts/%s.lua", share_dir, cmd);
		if (access(script, R_OK) == 0)
			return run_script(share_dir, script, argc - i - 1, argv + i + 1, NULL);
	}
	pr_err("unknown command '%s' (see lupe --help)", cmd);
	return 2;
}
