/* ProcessPrng for Wine 8, which lacks it: Go's Windows runtime calls it
   from bcryptprimitives.dll for random bytes. RtlGenRandom (exported by
   advapi32 as SystemFunction036) gives the same. */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID, ULONG);
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
	while (len > 0) {
		ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
		if (!SystemFunction036(data, n)) return FALSE;
		data += n;
		len -= n;
	}
	return TRUE;
}
