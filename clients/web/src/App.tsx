import { useEffect } from 'react';
import { useApp } from './state/store';
import { AuthScreen } from './ui/AuthScreen';
import { ChatScreen } from './ui/ChatScreen';
import { Notices } from './ui/Notices';

export function App() {
  const signedIn = useApp((s) => s.session !== undefined);
  useEffect(() => {
    document.title = signedIn ? 'Tern — chats' : 'Tern — sign in';
  }, [signedIn]);
  return (
    <>
      {signedIn ? <ChatScreen /> : <AuthScreen />}
      <Notices />
    </>
  );
}
