#include "go_asm.h"
#include "textflag.h"

#define SYS_exit 60
#define SYS_clone3 435

// func rawSpawn(p *spawnProgram) (pid, errno uintptr)
TEXT ·rawSpawn(SB),NOSPLIT|NOFRAME,$0-24
	MOVQ	p+0(FP), R12
	MOVQ	$SYS_clone3, AX
	LEAQ	spawnProgram_clone(R12), DI
	MOVQ	$cloneArgs__size, SI
	SYSCALL
	CMPQ	AX, $0
	JEQ	child
	// Parent: the child has exec'd or exited (or the clone failed).
	CMPQ	AX, $0xfffffffffffff001
	JHI	fail
	MOVQ	AX, pid+8(FP)
	MOVQ	$0, errno+16(FP)
	RET
fail:
	NEGQ	AX
	MOVQ	$0, pid+8(FP)
	MOVQ	AX, errno+16(FP)
	RET

child:
	// On the parent's stack, which the child must not touch: registers
	// only. R13 walks the ops, BX counts what is left.
	MOVQ	spawnProgram_ops(R12), R13
	MOVQ	spawnProgram_nops(R12), BX
next:
	CMPQ	BX, $0
	JEQ	exit
	MOVQ	spawnOp_nr(R13), AX
	MOVQ	(spawnOp_a+0)(R13), DI
	MOVQ	(spawnOp_a+8)(R13), SI
	MOVQ	(spawnOp_a+16)(R13), DX
	MOVQ	(spawnOp_a+24)(R13), R10
	MOVQ	(spawnOp_a+32)(R13), R8
	MOVQ	(spawnOp_a+40)(R13), R9
	SYSCALL
	CMPQ	AX, $0xfffffffffffff001
	JLS	ok
	CMPQ	spawnOp_ignoreErr(R13), $0
	JNE	ok
	NEGQ	AX
	MOVQ	AX, spawnProgram_failErrno(R12)
	JMP	exit
ok:
	ADDQ	$spawnOp__size, R13
	DECQ	BX
	JMP	next
exit:
	// Only a failed step (or a returning execve, which fails) gets here.
	MOVQ	$SYS_exit, AX
	MOVQ	$253, DI
	SYSCALL
	JMP	exit
