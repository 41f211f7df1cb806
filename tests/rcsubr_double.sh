# shellcheck shell=sh disable=SC2034,SC2154
# (The rc script sets and reads the variables this file reads and sets.)
#
# A stand-in for FreeBSD's /etc/rc.subr, for running rc.d/rctlpolicy on any POSIX sh.
#
# tests/test_rcd.py copies the rc script, points its `. /etc/rc.subr` line here and runs it.
# It behaves as rc.subr does where the script relies on it (set_rcvar defaults applied by
# load_rc_config, checkyesno, the rcvar gate, required_files/dirs, precmd and *_cmd hooks,
# ${name}_flags between command and command_args, ${name}_env via env(1)), but `start`
# prints the command line it would run, one argv word per line, instead of running it.
#
# Environment:
#   RCDOUBLE_RC_CONF  file load_rc_config sources (the test's rc.conf), optional
#   RCDOUBLE_SYSCTL   the sysctl(8) to use (SYSCTL_N is "$RCDOUBLE_SYSCTL -n")
#
# Extra command: `rcdouble_dump` prints the variables rc.subr would act on, as name=value.

SYSCTL="${RCDOUBLE_SYSCTL:-/sbin/sysctl}"
SYSCTL_N="${SYSCTL} -n"
rcvars=""

warn()
{
	echo 1>&2 "$0: WARNING: $*"
}

err()
{
	_rcdouble_status=$1
	shift
	echo 1>&2 "$0: ERROR: $*"
	exit "${_rcdouble_status}"
}

info()
{
	:
}

debug()
{
	:
}

checkyesno()
{
	eval "_rcdouble_value=\${$1}"
	case ${_rcdouble_value} in
	[Yy][Ee][Ss]|[Tt][Rr][Uu][Ee]|[Oo][Nn]|1)
		return 0
		;;
	[Nn][Oo]|[Ff][Aa][Ll][Ss][Ee]|[Oo][Ff][Ff]|0)
		return 1
		;;
	*)
		warn "\$$1 is not set properly - see rc.conf(5)."
		return 1
		;;
	esac
}

set_rcvar()
{
	case $# in
	0)
		echo "${name}_enable"
		;;
	1)
		echo "${1}_enable"
		;;
	*)
		rcvars="${rcvars} $1"
		eval "${1}_defval=\$2"
		_rcdouble_var=$1
		shift 2
		eval "${_rcdouble_var}_desc=\$*"
		;;
	esac
}

load_rc_config()
{
	if [ -n "${RCDOUBLE_RC_CONF}" ]; then
		# shellcheck disable=SC1090
		. "${RCDOUBLE_RC_CONF}"
	fi
	for _rcdouble_var in ${rcvar} ${rcvars}; do
		eval "_rcdouble_default=\${${_rcdouble_var}_defval}"
		if [ -n "${_rcdouble_default}" ]; then
			eval ": \"\${${_rcdouble_var}:=\${_rcdouble_default}}\""
		fi
	done
}

_rcdouble_command_line()
{
	eval "_rcdouble_flags=\${${name}_flags}"
	eval "_rcdouble_env=\${${name}_env}"
	echo "${_rcdouble_env:+env ${_rcdouble_env} }${command} ${_rcdouble_flags} ${command_args}"
}

_rcdouble_required()
{
	for _rcdouble_f in ${required_files}; do
		if [ ! -r "${_rcdouble_f}" ]; then
			warn "${_rcdouble_f} is not readable."
			return 1
		fi
	done
	for _rcdouble_d in ${required_dirs}; do
		if [ ! -d "${_rcdouble_d}/." ]; then
			warn "${_rcdouble_d} is not a directory."
			return 1
		fi
	done
}

run_rc_command()
{
	rc_arg=$1
	rc_force=
	_rcdouble_one=
	case "${rc_arg}" in
	force*)
		rc_force=yes
		rc_arg=${rc_arg#force}
		;;
	one*)
		_rcdouble_one=yes
		rc_arg=${rc_arg#one}
		;;
	esac

	case "${rc_arg}" in
	rcdouble_dump)
		for _rcdouble_var in name rcvar desc pidfile command command_args \
		    required_files required_dirs extra_commands start_precmd reload_cmd \
		    configtest_cmd procname command_interpreter child_pidfile rcvars; do
			eval "echo \"${_rcdouble_var}=\${${_rcdouble_var}}\""
		done
		echo "command_line=$(_rcdouble_command_line)"
		return 0
		;;
	start|stop|status|restart|rcvar)
		;;
	*)
		case " ${extra_commands} " in
		*" ${rc_arg} "*)
			;;
		*)
			echo 1>&2 "$0: unknown directive '${rc_arg}'."
			return 1
			;;
		esac
		;;
	esac

	if [ -z "${rc_force}${_rcdouble_one}" ] && [ "${rc_arg}" != rcvar ] &&
	    ! checkyesno "${rcvar}"; then
		echo "Cannot '${rc_arg}' ${name}. Set ${rcvar} to YES in /etc/rc.conf" \
		    "or use 'one${rc_arg}' instead of '${rc_arg}'."
		return 0
	fi

	eval "_rcdouble_cmd=\${${rc_arg}_cmd}"
	eval "_rcdouble_precmd=\${${rc_arg}_precmd}"
	if [ -n "${_rcdouble_cmd}" ]; then
		if [ -n "${_rcdouble_precmd}" ]; then
			eval "${_rcdouble_precmd}" || return 1
		fi
		eval "${_rcdouble_cmd}"
		return
	fi

	case "${rc_arg}" in
	start)
		_rcdouble_required || return 1
		if [ -n "${_rcdouble_precmd}" ] && ! eval "${_rcdouble_precmd}"; then
			warn "failed precmd routine for ${name}"
			return 1
		fi
		echo "Starting ${name}."
		# rc.subr evals the line it builds; so does this, to show the words it makes.
		eval "set -- $(_rcdouble_command_line)"
		for _rcdouble_word; do
			echo "argv: ${_rcdouble_word}"
		done
		;;
	*)
		echo 1>&2 "rcsubr_double: '${rc_arg}' is not emulated."
		return 1
		;;
	esac
}
