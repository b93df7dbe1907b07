"""``fedprompt completion bash|zsh|fish``: a completion script written from the parser itself, so that it offers
exactly the commands, options and choices the installed ``fedprompt`` takes.  One walk of the parser tree
(``tables``) gives four tables; each shell's script holds them and looks the typed words up in them the same
way: the words typed so far walk down the command tree; after an option with choices its choices are offered,
after another option that takes a value file names, else the command's subcommands, options and positional
choices."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, commands

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers

#: bash 4 or later: after an option that takes a value nothing is offered, so bash completes file names
#: (``complete -o default``).
BASH = """# bash completion for fedprompt, written by `fedprompt completion bash` (bash 4 or later)
_fedprompt() {{
    local -A children=( {children} )
    local -A offered=( {offered} )
    local -A choices=( {choices} )
    local -A takes_value=( {takes_value} )
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} path=fedprompt word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ " ${{children[$path]}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    if [[ -n ${{choices["$path|$prev"]}} ]]; then
        COMPREPLY=($(compgen -W "${{choices["$path|$prev"]}}" -- "$cur"))
    elif [[ -z ${{takes_value["$path|$prev"]}} ]]; then
        COMPREPLY=($(compgen -W "${{offered[$path]}}" -- "$cur"))
    fi
}}
complete -o default -F _fedprompt fedprompt
"""


#: zsh: loaded by ``source <(fedprompt completion zsh)`` after ``compinit``, or saved as ``_fedprompt`` on
#: ``$fpath`` (then autoloaded: the last lines tell the two apart, as click's scripts do).  ``path`` is taken by
#: zsh (it mirrors ``$PATH``), hence ``at``.
ZSH = """#compdef fedprompt
# zsh completion for fedprompt, written by `fedprompt completion zsh`
_fedprompt() {{
    local -A children offered choices takes_value
    children=( {children} )
    offered=( {offered} )
    choices=( {choices} )
    takes_value=( {takes_value} )
    local at=fedprompt word i prev=${{words[CURRENT-1]}}
    for ((i = 2; i < CURRENT; i++)); do
        word=${{words[i]}}
        if [[ " ${{children[$at]}} " == *" $word "* ]]; then
            at="$at $word"
        fi
    done
    if [[ -n ${{choices[$at|$prev]}} ]]; then
        compadd -- ${{=choices[$at|$prev]}}
    elif [[ -n ${{takes_value[$at|$prev]}} ]]; then
        _files
    else
        compadd -- ${{=offered[$at]}}
    fi
}}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _fedprompt "$@"
else
    compdef _fedprompt fedprompt
fi
"""

#: fish 3 or later: the tables are ``switch`` cases of one function; loaded by ``fedprompt completion fish |
#: source``, or saved as ``~/.config/fish/completions/fedprompt.fish``.
FISH = """# fish completion for fedprompt, written by `fedprompt completion fish`
function __fedprompt_table
    switch "$argv[1]|$argv[2]"
{cases}
    end
end

function __fedprompt_complete
    set -l tokens (commandline -opc)
    set -l at fedprompt
    for word in $tokens[2..-1]
        if contains -- $word (__fedprompt_table children $at)
            set at "$at $word"
        end
    end
    set -l key "$at|$tokens[-1]"
    set -l choices (__fedprompt_table choices $key)
    set -l value (__fedprompt_table takes_value $key)
    if set -q choices[1]
        printf '%s\\n' $choices
    else if set -q value[1]
        __fish_complete_path (commandline -ct)
    else
        __fedprompt_table offered $at
    end
end

complete -c fedprompt -f -a '(__fedprompt_complete)'
"""


@dataclass
class Tables:
    """What completion needs of the parser tree, keyed by a command's path (``fedprompt admin``) or by a path and
    an option (``fedprompt admin jobs|--format``)."""

    children: dict[str, list[str]] = field(default_factory=dict)
    offered: dict[str, list[str]] = field(default_factory=dict)
    choices: dict[str, list[str]] = field(default_factory=dict)
    takes_value: dict[str, list[str]] = field(default_factory=dict)

    def named(self) -> dict[str, dict[str, list[str]]]:
        return {"children": self.children, "offered": self.offered, "choices": self.choices,
                "takes_value": self.takes_value}


def tables(root: argparse.ArgumentParser) -> Tables:
    """The completion tables of ``root`` and every command below it."""
    out = Tables()
    for command in commands(root):
        path = command.prog
        out.children[path], out.offered[path] = [], []
        for action in command._actions:
            names = [str(c) for c in action.choices or ()]
            if isinstance(action, argparse._SubParsersAction):
                out.children[path] += names
                out.offered[path] += names
            elif not action.option_strings:
                out.offered[path] += names  # a positional's choices (bench NAME)
            else:
                out.offered[path] += action.option_strings
                for option in action.option_strings:
                    if names:
                        out.choices[f"{path}|{option}"] = names
                    elif action.nargs != 0:
                        out.takes_value[f"{path}|{option}"] = ["yes"]
    return out


def bash_script(root: argparse.ArgumentParser) -> str:
    """The bash completion script for ``root`` and every command below it."""
    def table(entries: dict[str, list[str]]) -> str:
        return " ".join(f"[{shlex.quote(key)}]={shlex.quote(' '.join(words))}" for key, words in entries.items())

    return BASH.format(**{name: table(entries) for name, entries in tables(root).named().items()})


def zsh_script(root: argparse.ArgumentParser) -> str:
    """The zsh completion script for ``root`` and every command below it."""
    def table(entries: dict[str, list[str]]) -> str:
        return " ".join(f"{shlex.quote(key)} {shlex.quote(' '.join(words))}" for key, words in entries.items())

    return ZSH.format(**{name: table(entries) for name, entries in tables(root).named().items()})


def fish_script(root: argparse.ArgumentParser) -> str:
    """The fish completion script for ``root`` and every command below it."""
    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    cases = [f"        case {quoted(f'{name}|{key}')}\n            printf '%s\\n' {' '.join(map(quoted, words))}"
             for name, entries in tables(root).named().items() for key, words in entries.items() if words]
    return FISH.format(cases="\n".join(cases))


#: The script writer of each shell ``completion`` takes.
SCRIPTS = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}


def cmd_completion(args: argparse.Namespace) -> int:
    from fedprompt.app.cli import build_parser

    print(SCRIPTS[args.shell](build_parser()), end="")
    return 0


def register(sub: Subparsers) -> None:
    """``completion SHELL``."""
    completion = add_command(sub, "completion", "print a shell completion script for fedprompt",
                             "fedprompt completion bash",
                             description="Print a completion script for the shell. bash (4 or later): `source "
                                         "<(fedprompt completion bash)`, or save it as "
                                         "~/.local/share/bash-completion/completions/fedprompt. zsh: `source "
                                         "<(fedprompt completion zsh)` after compinit, or save it as _fedprompt in "
                                         "a directory on $fpath. fish: `fedprompt completion fish | source`, or save "
                                         "it as ~/.config/fish/completions/fedprompt.fish.")
    completion.add_argument("shell", choices=sorted(SCRIPTS), help="the shell to complete in")
    completion.set_defaults(fn=cmd_completion)
